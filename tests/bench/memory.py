"""Memory figure of `make bench`: (e) the resident memory (RSS) of each service idling after start-up, against
a floor measured in the same run.

Each service and the gateway is started the way `make run` starts it (`crm_kit.devstack.Stack`: its own
process, `python -m <module>`, migrations on start, against the bench's PostgreSQL and NATS), waited for until
it answers its health check, then left idle until its RSS settles. The floor is a bare process started the
same way (`python -m tests.bench.memory floor`) that imports grpc, SQLAlchemy's asyncio layer, asyncpg and
nats-py, connects to the same PostgreSQL and NATS and serves a gRPC health check: what any service of this
architecture costs before it has code of its own.

Target: every service at or under 100 MB.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from crm_kit import infra
from crm_kit.devstack import GATEWAY, SERVICES, Stack, _grpc_serving

TARGET_MB = 100.0


def rss_mb(pid: int) -> float:
    """The resident set of `pid` in MB (VmRSS: anonymous, file-backed and shared pages the process maps)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def settled_rss(pids: dict[str, int], *, quiet: float = 3.0, timeout: float = 60.0) -> dict[str, float]:
    """Sample every process until none has moved by more than 1 MB for `quiet` seconds (idle: start-up work,
    first polls and the relays' first prune are over), then answer the last samples."""
    last = {name: rss_mb(pid) for name, pid in pids.items()}
    still_since = time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = {name: rss_mb(pid) for name, pid in pids.items()}
        if any(abs(now[n] - last[n]) > 1.0 for n in pids):
            still_since = time.monotonic()
        last = now
        if time.monotonic() - still_since >= quiet:
            break
    return {name: round(mb, 1) for name, mb in last.items()}


def start_floor(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = infra.free_port()
    popen = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.memory", "floor", str(port)],
        env={**os.environ, **env},
        cwd=Path(__file__).parents[2],
    )
    return popen, port


def wait_floor(popen: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while not _grpc_serving(f"127.0.0.1:{port}"):
        if popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the floor process did not start")
        time.sleep(0.2)


async def floor(port: int) -> None:
    """The floor process: a bare gRPC server (health only) with one PostgreSQL pool and one NATS connection."""
    import grpc
    import nats
    import sqlalchemy  # noqa: F401
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(os.environ["CRM_DATABASE_URL"], pool_size=2)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    nc = await nats.connect(os.environ["CRM_NATS_URL"])
    server = grpc.aio.server()
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        await server.wait_for_termination()
    finally:
        await nc.close()
        await engine.dispose()


async def measure(admin_dsn: str, nats_url: str, work: Path) -> dict[str, Any]:
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    stack = Stack(
        admin_dsn=admin_dsn,
        nats_url=nats_url,
        data_dir=work,
        database_prefix=f"benchmem{uuid.uuid4().hex[:6]}",
        log_dir=work / "logs",
        env={"CRM_EVENTS_NAMESPACE": namespace},
    )
    floor_db = f"{stack.database_prefix}_floor"
    await infra.create_database(admin_dsn, floor_db)
    floor_process = None
    try:
        started: dict[str, int] = {}
        for app in [*SERVICES, GATEWAY]:
            t0 = time.monotonic()
            process = stack.start(app)
            stack.wait_serving(process, timeout=90)
            started[app.name] = process.popen.pid
            print(f"bench: memory: {app.name} ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        floor_process, floor_port = start_floor(
            {"CRM_DATABASE_URL": infra.sqlalchemy_url(admin_dsn, floor_db), "CRM_NATS_URL": nats_url}
        )
        wait_floor(floor_process, floor_port)
        rss = settled_rss({**started, "floor": floor_process.pid})
    finally:
        if floor_process is not None:
            floor_process.terminate()
            floor_process.wait(10)
        stack.stop_all()
        stack.drop_databases()
        await infra.drop_database(admin_dsn, floor_db)
        await infra.delete_streams(nats_url, namespace)
    floor_mb = rss.pop("floor")
    return {
        "rss_mb": rss,
        "floor_mb": floor_mb,
        "floor": "python -m tests.bench.memory floor: grpc.aio health server + SQLAlchemy asyncpg pool + nats-py",
        "ratio_to_floor": {name: round(mb / floor_mb, 2) for name, mb in rss.items()},
        "target": f"every service <= {TARGET_MB:.0f} MB",
        "met": all(mb <= TARGET_MB for mb in rss.values()),
    }


async def run(*, admin_dsn: str, nats_url: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="crm-bench-memory-"))
    try:
        return await measure(admin_dsn, nats_url, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        asyncio.run(floor(int(sys.argv[2])))
