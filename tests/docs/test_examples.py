"""The examples in the docs run against the real system: identity, customers and sales behind a gateway.

Each documented file is one test: its ```http blocks and the curl lines of its ```sh blocks run in order in a
fresh company, and the answers shown in ```json blocks are checked against the real ones. How to write an
example the runner understands is in tests/docs/runner.py's docstring.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.docs.runner import Runner, examples, run_file

ROOT = Path(__file__).resolve().parents[2]

DOCUMENTED = [
    "README.md",
    "docs/partners.md",
    "docs/api-style.md",
    "services/identity/README.md",
    "services/customers/README.md",
    "services/sales/README.md",
    "services/gateway/README.md",
]


@pytest.fixture(scope="module")
async def gateway(
    test_infra, identity_service, customers_for_sales, sales_service
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of the run's identity, customers and sales services."""
    from tests.gateway.conftest import gateway_settings, running_gateway

    settings = gateway_settings(
        test_infra,
        identity_service.address,
        customers_service_addr=customers_for_sales.address,
        sales_service_addr=sales_service.address,
    )
    async with running_gateway(settings) as client:
        yield client


@pytest.mark.parametrize("relative", DOCUMENTED)
async def test_the_examples_of(relative: str, gateway) -> None:
    outcomes = await run_file(gateway, ROOT, relative)
    if not outcomes:
        pytest.skip(f"{relative} has no runnable examples")
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(outcomes)} examples of {relative} fail:\n" + "\n".join(
        o.describe() for o in outcomes
    )


WRONG = """
```http
# @name acme
# → ETag: "2"
POST /api/v1/accounts
Authorization: Bearer {{token}}

{"name": "示例科技有限公司", "lifecycle_stage": "prospect"}
```

```json
{"name": "示例科技有限公司", "lifecycle_stage": "customer", "version": 1}
```

```http
# → 404
GET /api/v1/accounts/{{acme.id}}
Authorization: Bearer {{token}}
```

```sh
curl -s localhost:8000/api/v1/accounts/$NOBODY -H "authorization: Bearer $ACCESS_TOKEN"
```

```http
POST /api/v1/accounts
{"name": "an answer or a body without the blank line"}
```

<!-- docs-test: skip: shows a request that cannot run -->
```http
GET /api/v1/nowhere
```
"""


async def test_a_wrong_example_fails(gateway) -> None:
    """The runner is not lenient: a wrong value or header shown, a wrong status, an unknown variable and a
    block it cannot read all fail."""
    runner = Runner(gateway)
    await runner.sign_up_company()
    found = examples(WRONG, "wrong.md")
    assert [e.skip for e in found] == [None, None, None, None, "shows a request that cannot run"]
    outcomes = [await runner.run(e) for e in found]
    created, read, curl, unreadable, skipped = outcomes
    assert created.status == 201 and created.problems == [
        """header ETag: shown '"2"', got '"1"'""",
        'the answer shown at line 12: $.lifecycle_stage: shown "customer", got "prospect"',
    ], created.describe()
    assert read.status == 200 and read.problems[0].startswith("expected 404, got 200"), read.describe()
    assert curl.status is None and "nothing named 'NOBODY'" in curl.problems[0], curl.describe()
    assert unreadable.problems[0].startswith("wrong.md:27: not a header"), unreadable.describe()
    assert skipped.ok and skipped.status is None


def test_partners_md_lists_every_event_type() -> None:
    """Partners learn from docs/partners.md which events exist: every message of an events.proto is named
    there, and the data-quality events of customers (messages that are only parts of an event, like
    PurgeSummary, are not events)."""
    text = (ROOT / "docs/partners.md").read_text(encoding="utf-8")
    missing = []
    for proto in sorted(ROOT.glob("protos/crm/*/v1/*.proto")):
        if proto.name not in ("events.proto", "data_quality.proto"):
            continue
        source = proto.read_text(encoding="utf-8")
        names = re.findall(r"^message (\w+) \{", source, re.M)
        parts = set(re.findall(r"^\s+(?:repeated\s+)?(\w+) \w+ = \d+", source, re.M))
        if proto.name != "events.proto":  # a file of requests and answers: only its events
            names = [n for n in names if re.search(r"(Created|Updated|Deleted|Merged|Undone|Finished)$", n)]
        missing += [
            f"{proto.relative_to(ROOT)}: {n}" for n in names if n not in parts and f"`{n}`" not in text
        ]
    assert not missing, "docs/partners.md does not name these events:\n" + "\n".join(missing)
