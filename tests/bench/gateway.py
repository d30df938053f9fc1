"""Gateway figures of `make bench`, each a ratio against a baseline measured in the same run:

(a) an authenticated GET of a user through gateway → gRPC → PostgreSQL, against the floor: a bare ASGI app
    forwarding each request over one gRPC hop to a bare server (tests.bench.floor), served with the same
    uvicorn settings (target: ≥ 0.5 of its req/s; p99 < 50 ms at 32 connections). Both are also reported
    against a bare uvicorn hello-world;
(b) sign-in throughput through the gateway, against raw argon2id hashes per second with the same parameters
    on as many threads as cores (target: ≥ 0.8).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from argon2 import PasswordHasher, Type
from crm_identity.settings import IdentitySettings
from crm_kit import infra
from crm_kit.devstack import GATEWAY, SERVICES, Stack

from tests.bench.load import LoadResult, median_of, run_load

PASSWORD = "bench password 123"


def _post(url: str, body: dict, headers: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def raw_argon2_rate(seconds: float, threads: int) -> float:
    s = IdentitySettings()
    hasher = PasswordHasher(
        time_cost=s.argon2_time_cost,
        memory_cost=s.argon2_memory_kib,
        parallelism=s.argon2_parallelism,
        type=Type.ID,
    )
    hashed = hasher.hash(PASSWORD)
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def work(i: int) -> None:
        while time.monotonic() < stop:
            hasher.verify(hashed, PASSWORD)
            counts[i] += 1

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return sum(counts) / (time.monotonic() - start)


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not infra.port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port}")
        time.sleep(0.05)


def start_hello(
    port: int, app: str = "tests.bench.hello:app", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", app, "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ],
        cwd=Path(__file__).parents[2],
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def start_floor(http_port: int, grpc_port: int) -> list[subprocess.Popen[bytes]]:
    """The architecture's floor (tests.bench.floor): HTTP in, one gRPC hop to a bare server, fixed bytes out."""
    root = Path(__file__).parents[2]
    backend = subprocess.Popen([sys.executable, "-m", "tests.bench.floor", "grpc", str(grpc_port)], cwd=root)
    front = start_hello(http_port, "tests.bench.floor:app", {"FLOOR_GRPC_TARGET": f"127.0.0.1:{grpc_port}"})
    return [backend, front]


async def measure(
    admin_dsn: str, nats_url: str, work: Path, *, seconds: float = 5.0, rounds: int = 3
) -> dict:
    stack = Stack(
        admin_dsn=admin_dsn,
        nats_url=nats_url,
        data_dir=work,
        database_prefix=f"bench{uuid.uuid4().hex[:6]}",
        log_dir=work / "logs",
        env={
            "CRM_EVENTS_NAMESPACE": f"bench{uuid.uuid4().hex[:6]}",
            # The figure is about the request path, not about the limits that would (rightly) refuse a flood.
            "CRM_RATE_LIMIT_PER_TENANT": "100000000/minute",
            "CRM_RATE_LIMIT_PUBLIC": "100000000/minute",
        },
    )
    hello_port = infra.free_port()
    hello = start_hello(hello_port)
    floor_port = infra.free_port()
    floor = start_floor(floor_port, infra.free_port())
    try:
        for app in SERVICES:
            stack.wait_serving(stack.start(app))
        gateway = stack.start(GATEWAY)
        stack.wait_serving(gateway)
        base = f"http://{gateway.address}"
        email = f"bench.{uuid.uuid4().hex[:8]}@example.com"
        signed = _post(
            f"{base}/api/v1/auth/signup",
            {"tenant_name": "压测公司", "email": email, "password": PASSWORD, "name": "测试"},
        )
        token = _post(f"{base}/api/v1/auth/token", {"email": email, "password": PASSWORD})["access_token"]
        user_url = f"{base}/api/v1/users/{signed['user']['id']}"
        auth = {"Authorization": f"Bearer {token}"}
        _wait_port(hello_port)
        _wait_port(floor_port)

        # (a) alternate the servers so drift in the machine's load touches all alike.
        gets: list[LoadResult] = []
        hellos: list[LoadResult] = []
        floors: list[LoadResult] = []
        for _ in range(rounds):
            hellos.append(await run_load(f"http://127.0.0.1:{hello_port}/", connections=32, seconds=seconds))
            floors.append(await run_load(f"http://127.0.0.1:{floor_port}/", connections=32, seconds=seconds))
            gets.append(await run_load(user_url, connections=32, seconds=seconds, headers=auth))
        get, hello_result, floor_result = median_of(gets), median_of(hellos), median_of(floors)

        # (b) sign-ins against raw hashes on every core.
        threads = os.cpu_count() or 2
        raw_rate = raw_argon2_rate(seconds, threads)
        body = json.dumps({"email": email, "password": PASSWORD}).encode()
        logins = await run_load(
            f"{base}/api/v1/auth/token",
            method="POST",
            connections=threads * 2,
            seconds=seconds * 2,
            headers={"content-type": "application/json"},
            body=body,
        )
        return {
            "a_get_user": {
                "gateway": get.summary(),
                "hello_world": hello_result.summary(),
                "ratio_rps": round(get.rps / hello_result.rps, 3),
                # One bare gRPC hop and nothing else (tests.bench.floor): what any gateway in front of gRPC
                # services pays at the least on this machine.
                "floor_one_grpc_hop": floor_result.summary(),
                "floor_ratio_rps": round(floor_result.rps / hello_result.rps, 3),
                "ratio_to_floor": round(get.rps / floor_result.rps, 3),
                "target": "ratio_to_floor >= 0.5 and gateway p99 < 50 ms",
                "met": get.rps / floor_result.rps >= 0.5 and get.percentile(99) < 50 and get.errors == 0,
            },
            "b_login": {
                "logins_per_s": round(logins.rps, 1),
                "login_errors": logins.errors,
                "raw_argon2id_per_s": round(raw_rate, 1),
                "threads": threads,
                "ratio": round(logins.rps / raw_rate, 3),
                "target": "ratio >= 0.8",
                "met": logins.rps / raw_rate >= 0.8 and logins.errors == 0,
            },
        }
    finally:
        for process in (hello, *floor):
            process.terminate()
            process.wait(10)
        stack.stop_all()
        stack.drop_databases()
        await infra.delete_streams(nats_url, stack.env["CRM_EVENTS_NAMESPACE"])


async def run(*, admin_dsn: str, nats_url: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="crm-bench-gateway-"))
    try:
        return await measure(admin_dsn, nats_url, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
