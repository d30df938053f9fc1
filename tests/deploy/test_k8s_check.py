"""deploy/check.py can fail: each test breaks one property of a real render (or of skaffold.yaml, the
Dockerfile, a checkov report) and expects the check to name it. Renders need helm, which `make k8s-check`
installs into .tools/ before the tests run; without it those tests are skipped."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load_check():
    spec = importlib.util.spec_from_file_location("crm_deploy_check", ROOT / "deploy" / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()


def _helm() -> str | None:
    local = ROOT / ".tools" / "helm" / "helm"
    return str(local) if local.exists() else shutil.which("helm")


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    helm = _helm()
    if helm is None:
        pytest.skip("helm is installed by `make k8s-check`")
    case = check.Case("production", [ROOT / "deploy/values-production.yaml", ROOT / "deploy/ci/production-secrets.yaml"])
    return check.load_objects(check.helm_template(helm, case).stdout)


PRODUCTION = [ROOT / "deploy/values-production.yaml", ROOT / "deploy/ci/production-secrets.yaml"]


def _expect() -> Any:
    return check.Expect(set(check.CALLS), "production", autoscaling=True, secrets_by_reference=True, tls=True,
                        otel=True, nats_auth=True, nats_tls=True, values=PRODUCTION)


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return _find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    """Give the container's variable `name` the plain `value` (no longer from a Secret, if it was)."""
    entry = next(e for e in container["env"] if e["name"] == name)
    entry.pop("valueFrom", None)
    entry["value"] = value


def test_the_production_render_meets_the_design(production):
    assert check.check_design(production, _expect()) == []


def test_a_missing_call_in_the_network_policy_is_reported(production):
    objects = copy.deepcopy(production)
    policy = _find(objects, "NetworkPolicy", "crm-sales")
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to") or []:
            labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
            if labels.get("app.kubernetes.io/name") == "customers":
                labels["app.kubernetes.io/name"] = "nobody"
    assert "sales -> customers:50051 is denied, the design says allowed" in check.check_network(objects, _expect())


def test_a_flow_the_design_does_not_have_is_reported(production):
    objects = copy.deepcopy(production)
    policy = _find(objects, "NetworkPolicy", "crm-reporting")
    policy["spec"]["egress"].append({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sales"}}}]})
    sales = _find(objects, "NetworkPolicy", "crm-sales")
    sales["spec"]["ingress"].append({"from": [{"podSelector": {}}]})
    problems = check.check_network(objects, _expect())
    assert "reporting -> sales:50051 is allowed, the design says denied" in problems
    assert "sales: an unrelated pod of the namespace can reach it" in problems


def test_a_pod_without_policy_is_reported(production):
    objects = [o for o in production if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] in
                                              {"crm-default-deny", "crm-marketing"})]
    problems = check.check_network(objects, _expect())
    assert "marketing: no NetworkPolicy selects it in both directions (default deny)" in problems


def test_a_drain_longer_than_the_grace_period_is_reported(production):
    objects = copy.deepcopy(production)
    _find(objects, "Deployment", "crm-identity")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 15
    problems = check.check_design(objects, _expect())
    assert any(p.startswith("crm-identity: terminationGracePeriodSeconds 15 <") for p in problems)


def test_a_writable_root_and_a_plain_secret_are_reported(production):
    objects = copy.deepcopy(production)
    c = _container(objects, "crm-sales")
    c["securityContext"]["readOnlyRootFilesystem"] = False
    _set_env(c, "CRM_DATABASE_URL", "postgresql+asyncpg://crm_sales:hunter2@db:5432/crm_sales")
    problems = check.check_design(objects, _expect())
    assert "crm-sales container allows privilege escalation or a writable root" in problems
    assert "crm-sales has a password in plain CRM_DATABASE_URL" in problems
    assert "crm-sales CRM_DATABASE_URL is not from a Secret" in problems
    assert check.check_no_secrets_in_defaults(objects)


def test_a_wrong_service_address_is_reported(production):
    objects = copy.deepcopy(production)
    _set_env(_container(objects, "crm-sales"), "CUSTOMERS_SERVICE_ADDR", "crm-customers:50051")
    assert "crm-sales CUSTOMERS_SERVICE_ADDR='crm-customers:50051'" in check.check_design(objects, _expect())


def test_the_skaffold_schema_rejects_a_misspelt_field():
    schema = json.loads(check.skaffold_schema_path().read_text())
    docs = [d for d in yaml.safe_load_all((ROOT / "skaffold.yaml").read_text()) if d]
    assert check.check_skaffold_schema(docs, schema) == []
    docs[1]["deploy"]["helm"]["releases"][0]["chartPth"] = "charts/crm"
    problems = check.check_skaffold_schema(docs, schema)
    assert problems and "chartPth" in " ".join(problems)


def test_a_skaffold_module_for_a_disabled_service_is_reported():
    docs = [d for d in yaml.safe_load_all((ROOT / "skaffold.yaml").read_text()) if d]
    problems = check.check_skaffold_design(docs, {"identity"})
    assert any("the chart enables ['identity']" in p for p in problems)


def test_checkov_failures_and_skips_without_reason_are_reported():
    report = {"results": {
        "passed_checks": [{}],
        "failed_checks": [{"check_id": "CKV_K8S_8", "check_name": "Liveness", "resource": "Deployment.crm.x"}],
        "skipped_checks": [{"check_id": "CKV_K8S_43", "resource": "Deployment.crm.y",
                            "check_result": {"result": "SKIPPED", "suppress_comment": "No comment provided"}}],
    }}
    problems, _skips, passed = check.check_checkov([report])
    assert passed == 1
    assert problems[0].startswith("CKV_K8S_8 Liveness")
    assert problems[1] == "CKV_K8S_43 skipped without a reason on Deployment.crm.y"


def test_the_dockerfile_contract_catches_a_fat_root_shell_image():
    good = (ROOT / "Dockerfile").read_text()
    assert check.check_dockerfile(good) == []
    bad = good.replace("COPY --from=build /app/.venv /app/.venv", "COPY . /src\nCOPY --from=build /app/.venv /app/.venv")
    bad = bad.replace("USER 10001:10001", "USER root")
    bad = bad.replace('ENTRYPOINT ["/bin/sh"', 'ENTRYPOINT python -m app #["/bin/sh"')
    problems = check.check_dockerfile(bad)
    assert any("copy only the venv" in p for p in problems)
    assert "runtime stage must run as a numeric non-root USER" in problems
    assert "ENTRYPOINT must be exec form" in problems


def _set_auth_conf(objects: list[dict[str, Any]], edit) -> None:  # type: ignore[no-untyped-def]
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "crm-nats-auth")
    cm["data"]["auth.conf"] = edit(cm["data"]["auth.conf"])


def test_every_service_has_its_nats_user_and_the_kits_permissions(production):
    """Each deployed service (all of them in this render) has a user; the lists are the kit's."""
    users = check.parse_nats_auth(check.nats_auth_conf(production) or "")
    assert set(users) == {f"crm-{s}" for s in check.CALLS}
    assert check.check_nats(production, _expect()) == []


def test_a_service_granted_another_services_subjects_is_reported(production):
    objects = copy.deepcopy(production)
    _set_auth_conf(objects, lambda conf: conf.replace('"crm.sales.>"', '"crm.sales.>", "crm.identity.>"', 1))
    problems = check.check_nats(objects, _expect())
    assert any(p.startswith("crm-sales may publish") and "crm.identity.>" in p for p in problems)


def test_a_missing_nats_user_and_a_shared_password_are_reported(production):
    objects = copy.deepcopy(production)
    _set_auth_conf(objects, lambda conf: conf.replace('user: "crm-reporting"', 'user: "crm-reporting-old"'))
    c = _container(objects, "crm-customers")
    _set_env(c, "CRM_NATS_USER", "crm")
    _set_env(c, "CRM_NATS_PASSWORD", "shared-by-everyone-0123456789")
    problems = check.check_nats(objects, _expect())
    assert "auth.conf has no NATS user crm-reporting" in problems
    assert "crm-customers does not connect to NATS as its own user crm-customers" in problems
    assert "crm-customers CRM_NATS_PASSWORD is not from a Secret" in problems


def test_nats_without_tls_is_reported(production):
    objects = copy.deepcopy(production)
    c = _container(objects, "crm-identity")
    c["env"] = [e for e in c["env"] if e["name"] != "CRM_NATS_TLS_CA_FILE"]
    _set_env(c, "CRM_NATS_URL", "nats://nats.nats.svc:4222")
    problems = check.check_nats(objects, _expect())
    assert "crm-identity CRM_NATS_URL is not tls://" in problems
    assert "crm-identity has no NATS CA (CRM_NATS_TLS_CA_FILE) mounted from a Secret" in problems


def test_the_chart_checks_nats_passwords_with_the_kits_rule():
    """Helm cannot import the kit: its copy of the rule (crm_kit.settings.NATS_PASSWORD) must stay the same."""
    from crm_kit.settings import NATS_PASSWORD

    helpers = (ROOT / "charts/crm/templates/_helpers.tpl").read_text()
    assert f'regexMatch "{NATS_PASSWORD.pattern}"' in helpers


def test_the_production_values_turn_nats_auth_and_tls_on():
    values = check.merged_values([ROOT / "deploy/values-production.yaml"])
    assert values["nats"]["auth"]["enabled"] is True
    assert values["nats"]["tls"]["enabled"] is True
    assert values["nats"]["url"].startswith("tls://")


def test_a_spool_in_tmp_or_beyond_the_ephemeral_storage_is_reported(production):
    objects = copy.deepcopy(production)
    dep = _find(objects, "Deployment", "crm-gateway")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["resources"]["limits"]["ephemeral-storage"] = "512Mi"
    _set_env(_container(objects, "crm-sales"), "CRM_SPOOL_DIR", "/tmp")
    customers = _container(objects, "crm-customers")
    customers["env"] = [e for e in customers["env"] if e["name"] != "CRM_SPOOL_DIR"]
    problems = check.check_spool(objects, _expect())
    assert "crm-gateway: ephemeral-storage limits 512Mi < /tmp + spool (1600Mi)" in problems
    assert (
        "crm-sales: CRM_SPOOL_DIR /tmp is not an emptyDir with a sizeLimit" in problems
        or "crm-sales: the spool shares /tmp" in problems
    )
    assert "crm-customers has no CRM_SPOOL_DIR" in problems


def test_a_spool_budget_at_or_above_its_size_limit_is_reported(production):
    objects = copy.deepcopy(production)
    _set_env(_container(objects, "crm-gateway"), "CRM_SPOOL_MAX_BYTES", str(1536 * 1024 * 1024))
    problems = check.check_spool(objects, _expect())
    assert problems == ["crm-gateway: CRM_SPOOL_MAX_BYTES 1610612736 is not below the spool's sizeLimit"]


def test_every_service_and_the_gateway_have_a_bounded_spool(production):
    assert check.check_spool(production, _expect()) == []
    for svc in check.CALLS:
        c = _container(production, f"crm-{svc}")
        env = check.env_of(c)
        assert env["CRM_SPOOL_DIR"]["value"] == "/var/spool/crm"


def test_the_gateway_gets_its_database_as_the_services_do(production):
    """Secret-held URL, a migration Job before every install/upgrade, egress to PostgreSQL."""
    assert "gateway" in check.WITH_DATABASE
    env = check.env_of(_container(production, "crm-gateway"))
    assert env["CRM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "crm-gateway-database"
    job = _find(production, "Job", "crm-gateway-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "crm_gateway"
    assert check.check_design(production, _expect()) == []


def test_the_development_postgres_serves_every_service_with_a_database():
    docs = list(yaml.safe_load_all((ROOT / "deploy/local/postgres.yaml").read_text()))
    assert check.check_dev_postgres(docs) == []
    docs[0]["data"]["10-crm-databases.sh"] = docs[0]["data"]["10-crm-databases.sh"].replace("gateway ", "")
    assert any("makes databases for" in p for p in check.check_dev_postgres(docs))
