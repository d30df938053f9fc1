"""The company-name rule on imports finds what it found before the probe was scoped to the tenant and split into
a same-key look-up and a trigram look-up (issue 11 (f)): every written variant of a Chinese company name
(region in front, in brackets or with its province, another organisational form, full-width brackets, the
English name), within the tenant only, and near keys when the rule's threshold lets them match; the API check
finds the same. Real PostgreSQL, through the gRPC API."""

from __future__ import annotations

import hashlib
import random
import uuid
from difflib import SequenceMatcher

import grpc
import pytest
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc, duplicates_pb2
from crm_customers import normalize
from crm_customers.domain.imports import pipeline
from sqlalchemy import text

from tests.customers.helpers import new_account, sign_up
from tests.customers.test_import import ACCOUNTS, csv_bytes, errors_of, run_to_end, upload

SKIP = dq.IMPORT_DUPLICATE_ACTION_SKIP
ALLOW = duplicates_pb2.DUPLICATE_ACTION_ALLOW
# Variants of 华为技术有限公司 (and of its English name) the rule catches, as the API tests and test_normalize show.
HUAWEI_VARIANTS = (
    "华为技术（深圳）有限公司",
    "深圳华为技术有限公司",
    "深圳市华为技术有限公司",
    "广东省深圳市华为技术有限公司",
    "华为技术(深圳)有限公司",
    "华为技术股份有限公司",
    "华为技术有限责任公司",
    "ＨＵＡＷＥＩ Technologies Co., Ltd.",
    "HUAWEI Technologies Co., Ltd.",
    "Huawei Technologies Co Ltd",
)
# Not the same company: a branch, another trade name, a homophone (0.8 < the default 0.85).
NOT_HUAWEI = (
    "华为技术有限公司北京分公司",
    "华为数字能源技术有限公司",
    "华伟技术有限公司",
    "阿里巴巴（中国）有限公司",
)


@pytest.fixture(scope="session")
async def data(customers_service):
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield data_quality_pb2_grpc.CustomersDataServiceStub(channel)


async def company_rule(data, company, threshold: float = 0.0):
    rule = dq.DuplicateRule(
        name="公司名称",
        record_type=pb.RECORD_TYPE_ACCOUNT,
        match=duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME,
        on_create=ALLOW,
        on_update=ALLOW,
        on_import=SKIP,
        threshold=threshold,
    )
    await data.CreateDuplicateRule(dq.CreateDuplicateRuleRequest(duplicate_rule=rule), metadata=company.md)


async def import_names(data, company, names: list[str]):
    content = csv_bytes([["公司名称"], *([n] for n in names)])
    job = await upload(data, company, content, target=ACCOUNTS, name="accounts.csv", chunk=1 << 16)
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
    done = await run_to_end(data, company, job.id)
    assert done.status == dq.JOB_STATUS_SUCCEEDED, done.error
    return done, await errors_of(data, company, job.id)


async def test_every_variant_is_skipped_within_the_tenant_and_only_there(identity, customers, data):
    company, other = await sign_up(identity), await sign_up(identity)
    await company_rule(data, company)
    await company_rule(data, other)
    huawei = await new_account(customers, company, "华为技术有限公司")
    # Many accounts of similar trade names beside it, in this tenant and in another: none of them is a match,
    # and the other tenant's own 华为 is never a candidate.
    for name in ("华为终端有限公司", "华夏银行股份有限公司", "华润置地有限公司", "为华科技有限公司"):
        await new_account(customers, company, name)
    await new_account(customers, other, "华为技术有限公司")
    only_there = await new_account(customers, other, "腾讯科技（深圳）有限公司")

    # Each variant is a match in the table (a repeat within the file would be skipped as such).
    done, errors = await import_names(data, company, [*HUAWEI_VARIANTS, "腾讯科技有限公司"])
    skipped = {row: reason for row, _, _, reason in errors}
    for row, variant in enumerate(HUAWEI_VARIANTS, start=2):
        assert skipped.get(row) == f"skipped: duplicate of record {huawei.id} (company_name)", variant
    assert done.rows_skipped == len(HUAWEI_VARIANTS)
    # The other tenant's 腾讯 is not this tenant's: created here.
    assert done.rows_created == 1 and only_there.id not in str(errors)

    # Names of another company (one per file, so that no row repeats an earlier one's key) are created.
    for name in NOT_HUAWEI:
        done, errors = await import_names(data, company, [name])
        assert (done.rows_created, done.rows_skipped) == (1, 0), (name, errors)


async def test_a_lower_threshold_still_finds_near_keys_by_trigrams(identity, customers, data):
    """腾信 (tengxin) is not 腾讯 (tengxun): at 0.7 the keys' similarity (0.857 × 0.85 = 0.729) is a match, at the
    default 0.85 only names of the same key are."""
    low, default = await sign_up(identity), await sign_up(identity)
    await company_rule(data, low, threshold=0.7)
    await company_rule(data, default)
    tencent_low = await new_account(customers, low, "腾讯科技有限公司")
    await new_account(customers, default, "腾讯科技有限公司")

    done, errors = await import_names(data, low, ["深圳市腾信科技有限公司", "阿里巴巴（中国）有限公司"])
    assert (done.rows_skipped, done.rows_created) == (1, 1)
    assert errors[0][0] == 2 and tencent_low.id in errors[0][3]

    done, _ = await import_names(data, default, ["深圳市腾信科技有限公司"])
    assert (done.rows_skipped, done.rows_created) == (0, 1)


async def test_the_api_check_finds_the_same_variants(identity, customers, data):
    company = await sign_up(identity)
    await company_rule(data, company)
    huawei = await new_account(customers, company, "华为技术有限公司")
    for variant in HUAWEI_VARIANTS:
        found = await data.CheckDuplicates(
            dq.CheckDuplicatesRequest(record_type=pb.RECORD_TYPE_ACCOUNT, account=pb.Account(name=variant)),
            metadata=company.md,
        )
        assert [c.id for c in found.candidates] == [huawei.id], variant


async def test_the_same_key_probe_is_a_b_tree_look_up_inside_the_tenant(customers_service):
    """EXPLAIN of the import's same-key statement (the only one at the default threshold): the (tenant_id,
    name_key) B-tree with both as its index condition, never a scan of the tenant's rows or of every tenant's
    similar keys."""
    tenant = str(uuid.uuid4())
    async with customers_service.runtime.db.unit_of_work() as uow:
        # A tenant of 20,000 accounts (plain SQL: only the plan is looked at) and fresh statistics.
        await uow.session.execute(
            text(
                "INSERT INTO accounts (id, tenant_id, name, name_key, owner_id, version) "
                "SELECT gen_random_uuid()::text, :tenant, 'n' || g, md5((g % 5000)::text), 'o', 1 "
                "FROM generate_series(1, 20000) AS g"
            ),
            {"tenant": tenant},
        )
    async with customers_service.runtime.db.unit_of_work() as uow:
        await uow.session.execute(text("ANALYZE accounts"))
    async with customers_service.runtime.db.unit_of_work() as uow:
        await uow.session.execute(text("SET LOCAL enable_seqscan = off"))  # as the import sets it
        plan = "\n".join(
            r[0]
            for r in await uow.session.execute(
                text(f"EXPLAIN {pipeline.SAME_KEY_SQL}"),
                {"keys": [hashlib.md5(b"7").hexdigest()], "tenant": tenant},
            )
        )
        await uow.session.execute(text("DELETE FROM accounts WHERE tenant_id = :tenant"), {"tenant": tenant})
    assert "Index Scan using ix_accounts_tenant_name_key " in plan, plan
    assert "Index Cond: (((tenant_id)::text = " in plan and "AND ((name_key)::text = v.key))" in plan, plan


def test_only_a_rule_below_the_bound_needs_other_keys():
    """`best_score_of_another_key` bounds the score of every name whose key differs: random keys and their
    edits (one character added, dropped or changed, two swapped) never score above it."""
    rnd = random.Random(11)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    for _ in range(20_000):
        a = "".join(rnd.choice(letters) for _ in range(rnd.randint(1, 24)))
        i = rnd.randrange(len(a) + 1)
        b = rnd.choice(
            (
                a[:i] + rnd.choice(letters) + a[i:],
                a[:i] + a[i + 1 :],
                a[:i] + rnd.choice(letters) + a[i + 1 :],
                a[:i] + a[i + 1 : i + 2] + a[i : i + 1] + a[i + 2 :],
                "".join(rnd.choice(letters) for _ in range(rnd.randint(1, 24))),
            )
        )
        if not b or a == b:
            continue
        score = round(SequenceMatcher(None, a, b).ratio() * 0.85, 3)
        assert score <= normalize.best_score_of_another_key(a), (a, b)
    # The default threshold needs no trigram probe for any key; 0.7 does for keys of 3+ characters.
    assert normalize.best_score_of_another_key("a" * 300) < 0.85
    assert normalize.best_score_of_another_key("tengxun") >= 0.7 > normalize.best_score_of_another_key("ab")
