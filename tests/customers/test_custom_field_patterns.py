"""A tenant's custom-field `pattern` cannot freeze the service (issue 10, item 3b): patterns run on RE2 (linear
time), a pattern RE2 cannot run is refused with a clear 422 when the field is saved, and a value checked against
a pattern that backtracks for hours in Python's `re` answers at once while other requests go on as usual."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import statistics
import time

from tests.customers.test_gateway_customers import capi  # noqa: F401 (a fixture)
from tests.gateway.conftest import assert_problem, sign_up

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Catastrophic for a backtracking engine: 2^n steps for n characters of "a" and a last one that fails.
EVIL = ("(a+)+", "(a|aa)+", "(a|a?)+", "(x+x+)+y", "(.*a){12}")
UNSUPPORTED = ("(?=a)a", "(a)\\1", "(?<!b)a", "a{1000}{1000}", "(a", "x" * 501)


async def _field(capi, h, key: str, pattern: str):  # noqa: F811
    return await capi.post(
        "/api/v1/custom-fields",
        json={
            "record_type": "account",
            "key": key,
            "label_en": key,
            "type": "text",
            "pattern": pattern,
        },
        headers=h,
    )


async def test_patterns_re2_cannot_run_are_refused_when_the_field_is_saved(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    for i, pattern in enumerate(UNSUPPORTED):
        refused = await _field(capi, h, f"bad_{i}", pattern)
        problem = assert_problem(refused, 422)
        [error] = [e for e in problem["errors"] if e["field"].endswith("pattern")]
        assert "pattern" in error["message"] or "characters" in error["message"], error
    made = await _field(capi, h, "code", "[A-Z]{2}-[0-9]{3}")
    assert made.status_code == 201, made.text
    version = made.json()["version"]
    changed = await capi.patch(
        f"/api/v1/custom-fields/{made.json()['id']}",
        json={"pattern": "(?=A)A"},
        headers={**h, "If-Match": f'"{version}"'},
    )
    assert_problem(changed, 422)
    ok = await capi.post(
        "/api/v1/accounts", json={"name": "甲", "custom_fields": {"code": "AB-123"}}, headers=h
    )
    assert ok.status_code == 201, ok.text
    bad = await capi.post(
        "/api/v1/accounts", json={"name": "乙", "custom_fields": {"code": "ab-123"}}, headers=h
    )
    assert {e["field"] for e in assert_problem(bad, 422)["errors"]} == {"custom_fields.code"}


async def test_a_backtracking_pattern_answers_at_once_and_others_go_on(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    for i, pattern in enumerate(EVIL):
        made = await _field(capi, h, f"evil_{i}", pattern)
        assert made.status_code == 201, made.text  # RE2 runs these in linear time: nothing to refuse

    async def probe() -> float:
        start = time.perf_counter()
        r = await capi.get("/api/v1/accounts", params={"limit": 5}, headers=h)
        assert r.status_code == 200
        return time.perf_counter() - start

    usual = statistics.median([await probe() for _ in range(15)])
    done = asyncio.Event()
    latencies: list[float] = []

    async def keep_probing():
        while not done.is_set():
            latencies.append(await probe())
            await asyncio.sleep(0.02)

    prober = asyncio.create_task(keep_probing())
    try:
        # 26 characters: seconds for Python's re with the first pattern, hours at 40.
        values = {f"evil_{i}": "a" * 26 + "!" for i in range(len(EVIL))}
        values["evil_3"] = "x" * 26
        values["evil_4"] = "a" * 26
        bad = await capi.post("/api/v1/accounts", json={"name": "丙", "custom_fields": values}, headers=h)
        await asyncio.sleep(0.2)
    finally:
        done.set()
        await prober
    fields = {e["field"] for e in assert_problem(bad, 422)["errors"]}
    assert fields == {f"custom_fields.evil_{i}" for i in range(len(EVIL)) if i != 4}  # (.*a){12} matches a*26
    assert latencies and max(latencies) < max(1.5, 30 * usual), (usual, max(latencies))


def test_no_pattern_from_data_reaches_pythons_re():
    """Every call of `re` in the services and the kit compiles a pattern written in the code (a literal, or
    built from the code's own constants with re.escape); tenant patterns go through crm_kit.patterns (RE2)."""
    built_from_code = {
        # Region names of the code's own table, escaped.
        ("services/customers/src/crm_customers/normalize.py", "_REGION_NAMES"),
        # The kit's request-id pattern, sized by its own constant.
        ("libs/kit/src/crm_kit/context.py", "REQUEST_ID_MAX"),
        # The gateway's own route templates, their literal parts escaped.
        ("services/gateway/src/crm_gateway/files.py", "'/'.join(parts)"),
    }
    found = set()
    for path in [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]:
        if path.name.endswith("_pb2.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "re"
                and node.func.attr != "escape"
                and node.args
            ):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str | bytes):
                continue
            where = str(path.relative_to(ROOT))
            source = ast.unparse(first)
            assert any(where == f and marker in source for f, marker in built_from_code), (where, node.lineno)
            found.add(where)
    assert found == {f for f, _ in built_from_code}  # the list above stays exact
