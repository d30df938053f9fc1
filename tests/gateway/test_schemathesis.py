"""Schemathesis over the whole /openapi.json, against the real gateway in front of the real identity, customers
and sales services: no request the document allows (or refuses) may get a server error, and no answer may
break its own schema or media type. Bounded to a few minutes (CRM_SCHEMATHESIS_EXAMPLES cases per operation,
CRM_SCHEMATHESIS_SECONDS in all)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn
from crm_gateway.app import create_app
from crm_kit import infra

from tests.gateway.conftest import PASSWORD, gateway_settings, unique_email

EXAMPLES = int(os.environ.get("CRM_SCHEMATHESIS_EXAMPLES", "6"))
SECONDS = int(os.environ.get("CRM_SCHEMATHESIS_SECONDS", "240"))
# Not content_type_conformance: a request line the HTTP server itself cannot parse (uvicorn, before the app) is
# answered with its own text/plain 400; every answer of the application is checked by the schema check.
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"


@pytest.fixture
async def served_gateway(test_infra, identity_service, customers_for_sales, sales_service, unused_tcp_port):
    """The gateway on a real port (schemathesis speaks HTTP), served by this test's event loop."""
    settings = gateway_settings(
        test_infra,
        identity_service.address,
        customers_service_addr=customers_for_sales.address,
        sales_service_addr=sales_service.address,
    )
    name = settings.database_url.rsplit("/", 1)[1]
    await infra.create_database(infra.asyncpg_dsn(settings.database_url, "postgres"), name, extensions=())
    app = create_app(settings)
    app.openapi()  # built once, before the first request
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=unused_tcp_port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the gateway did not start"
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{unused_tcp_port}"
    finally:
        server.should_exit = True
        await task


@pytest.mark.timeout(SECONDS + 300)
async def test_the_whole_document_holds_under_schemathesis(served_gateway, tmp_path):
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        email = unique_email("fuzz")
        signed = await client.post(
            "/api/v1/auth/signup",
            json={"tenant_name": "模糊测试有限公司", "email": email, "password": PASSWORD, "name": "测试员"},
        )
        assert signed.status_code < 300, signed.text
        token = await client.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
        assert token.status_code < 300, token.text
        access = token.json()["access_token"]
    report = tmp_path / "junit.xml"
    output = Path(os.environ.get("CRM_SCHEMATHESIS_OUTPUT", tmp_path / "schemathesis.txt"))
    st = Path(sys.executable).with_name("st")
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{served_gateway}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {access}",
        "--max-examples",
        str(EXAMPLES),
        "--max-time",
        str(SECONDS),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "2",
        "--seed",
        "20261202",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--wait-for-schema",
        "60",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        stdout=_open(output),
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # schemathesis keeps a cache of what it found in its working directory
    )
    await proc.wait()
    assert proc.returncode == 0, _tail(output)


def _open(path: Path):
    return path.open("wb")


def _tail(path: Path) -> str:
    """The failures schemathesis reports (each line cut short: a generated payload can be megabytes)."""
    lines = [line[:300] for line in path.read_text(errors="replace").splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "FAILURES" in line), max(0, len(lines) - 150))
    end = next((i for i, line in enumerate(lines) if "WARNINGS" in line and i > start), len(lines))
    return "\n".join(lines[start:end][:300] + lines[-5:])
