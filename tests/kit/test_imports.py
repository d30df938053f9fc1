"""The kit's import machinery without a database: header → field suggestion, mapping checks, reading files,
the job as a message."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from crm.common.v1 import imports_pb2
from crm.customers.v1 import data_quality_pb2
from crm_kit.errors import InvalidArgument
from crm_kit.imports import source
from crm_kit.imports.importer import Converted, new_row, outcome_of
from crm_kit.imports.jobs import fill_job
from crm_kit.imports.mapping import Vocabulary, fold
from crm_kit.imports.models import ImportJob
from openpyxl import Workbook

PEOPLE = Vocabulary(
    "people",
    {
        "name": ("姓名", "联系人", "fullname"),
        "phone": ("手机", "电话", "mobile"),
        "note": ("备注", "remarks"),
    },
    required=("name",),
)


def test_headers_fold_width_case_and_punctuation_away():
    assert fold(" Company_Name：") == fold("company name") == "companyname"
    assert fold("（手机）") == "手机"
    assert fold("ＥＭＡＩＬ") == "email"


def test_chinese_and_english_headers_are_suggested_once_each():
    suggested = PEOPLE.suggest(["姓名", "Mobile", "电话", "其他"])
    assert suggested == [("姓名", "name"), ("Mobile", "phone"), ("电话", ""), ("其他", "")]


def test_the_tenants_own_fields_are_suggested_by_key_or_label():
    custom = [("budget", "预算", "Budget")]
    assert PEOPLE.suggest(["预算", "姓名"], custom) == [("预算", "custom_fields.budget"), ("姓名", "name")]


def test_a_mapping_is_refused_naming_every_problem():
    with pytest.raises(InvalidArgument) as refused:
        PEOPLE.check(["姓名", "手机", "备注"], [("手机", "name"), ("备注", "name"), ("没有", "note")])
    fields = {(e.field, e.message) for e in refused.value.field_errors}
    assert fields == {
        ("mapping.没有", "is not a column of the file"),
        ("mapping", "name is filled by more than one column"),
    }
    with pytest.raises(InvalidArgument) as missing:
        PEOPLE.check(["姓名", "手机"], [("手机", "phone"), ("姓名", "custom_fields.x")])
    assert {e.message for e in missing.value.field_errors} == {
        "custom_fields.x is not a field of people",
        "no column fills name, which is required",
    }
    # Columns left out of the mapping are ignored.
    assert PEOPLE.check(["姓名", "手机"], [("姓名", "name")]) == [("姓名", "name"), ("手机", "")]


def test_free_attributes_take_any_short_key():
    free = Vocabulary(
        "leads", {"name": ()}, required=("name",), custom_prefix="attributes.", free_custom=True
    )
    assert free.check(["n", "员工数"], [("n", "name"), ("员工数", "attributes.员工数")])[1] == (
        "员工数",
        "attributes.员工数",
    )
    with pytest.raises(InvalidArgument):
        free.check(["n", "x"], [("n", "name"), ("x", "attributes.")])
    with pytest.raises(InvalidArgument):
        free.check(["n", "x"], [("n", "name"), ("x", "attributes." + "k" * 101)])


def _csv(rows, encoding="utf-8"):
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode(encoding)


def test_csv_in_gb18030_and_xlsx_read_the_same(tmp_path):
    rows = [["姓名", "手机"], ["王小明", "13800138000"], ["", ""], ["李雷", "13900139000"]]
    gbk = tmp_path / "a.csv"
    gbk.write_bytes(_csv(rows, "gb18030"))
    encoding = source.detect_encoding(gbk.read_bytes()[:65536])
    assert encoding == "gb18030"
    wb = Workbook()
    for row in rows:
        wb.active.append(row)
    xlsx = tmp_path / "a.xlsx"
    wb.save(xlsx)
    assert source.detect_format("a.xlsx", "", xlsx.read_bytes()[:4]) == "xlsx"
    for path, fmt in ((gbk, "csv"), (xlsx, "xlsx")):
        assert source.header_of(str(path), fmt, encoding) == ["姓名", "手机"]
        # Blank rows are skipped; numbers are the spreadsheet's row numbers.
        assert list(source.data_rows(str(path), fmt, encoding)) == [
            (2, ["王小明", "13800138000"]),
            (4, ["李雷", "13900139000"]),
        ]


def test_a_columns_distinct_values_are_read_up_to_a_limit(tmp_path):
    path = tmp_path / "owners.csv"
    path.write_bytes(
        _csv([["name", "owner"], ["a", "x@a.cn"], ["b", " x@a.cn "], ["c", ""], ["d", "y@a.cn"]])
    )
    assert source.distinct_values(str(path), "csv", "utf-8", 1, 10) == {"x@a.cn", "y@a.cn"}
    with pytest.raises(source.BadFile):
        source.distinct_values(str(path), "csv", "utf-8", 1, 1)


def test_outcomes_count_each_rows_action_and_keep_its_errors():
    rows = [new_row(2, Converted({"name": "a"})), new_row(3, Converted({}, [("姓名", "", "is required")]))]
    rows[0].action = "skip"
    rows[0].errors.append(("手机", "138", "skipped: duplicate"))
    got = outcome_of(rows)
    assert (got.created, got.skipped, got.failed) == (0, 1, 1)
    assert got.errors == [(2, "手机", "138", "skipped: duplicate"), (3, "姓名", "", "is required")]
    rows[1].reset()
    assert rows[1].action == "failed" and rows[1].errors == [("姓名", "", "is required")]


def _job(**kw) -> ImportJob:
    values = dict(
        id="0190a7e4-0000-7000-8000-000000000001",
        tenant_id="t",
        target="leads",
        status="running",
        file_name="线索.csv",
        format="csv",
        size_bytes=10,
        columns=["姓名"],
        mapping=[{"column": "姓名", "field": "name"}],
        rows_total=200,
        rows_done=50,
        rows_created=40,
        rows_updated=0,
        rows_skipped=5,
        rows_failed=5,
        error="",
        owner_id="u",
        created_by="u",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        options={"on_duplicate": "skip"},
    )
    values.update(kw)
    return ImportJob(**values)


def test_a_job_fills_the_common_message_and_customers_own():
    common = fill_job(imports_pb2.ImportJob(), _job())
    assert common.status == imports_pb2.JOB_STATUS_RUNNING and common.format == imports_pb2.FILE_FORMAT_CSV
    assert (common.rows_done, common.percent, dict(common.options)) == (50, 25, {"on_duplicate": "skip"})
    assert [(m.column, m.field) for m in common.mapping] == [("姓名", "name")]
    assert common.created_at.seconds and not common.HasField("finished_at")
    # Customers' older message has the same field names (and its target enum besides).
    theirs = fill_job(
        data_quality_pb2.CustomerImportJob(), _job(status="succeeded"), target=data_quality_pb2.IMPORT_TARGET_CONTACTS
    )
    assert theirs.status == data_quality_pb2.JOB_STATUS_SUCCEEDED and theirs.percent == 100
    assert theirs.target == data_quality_pb2.IMPORT_TARGET_CONTACTS
    # Progress never claims 100 before the end, and is 0 while the total is unknown.
    assert fill_job(imports_pb2.ImportJob(), _job(rows_done=200)).percent == 99
    assert fill_job(imports_pb2.ImportJob(), _job(rows_total=0)).percent == 0
