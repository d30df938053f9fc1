"""Normal forms: the same company, person, phone, e-mail or credit code however it was typed."""

from __future__ import annotations

import pytest
from crm_customers.normalize import (
    InvalidValue,
    company_name_clean,
    company_name_key,
    company_name_score,
    normalize_credit_code,
    normalize_email,
    normalize_phone,
    person_name_key,
    person_name_score,
)

HUAWEI = [
    "华为技术有限公司",
    "华为技术（深圳）有限公司",
    "深圳华为技术有限公司",
    "深圳市华为技术有限公司",
    "广东省深圳市华为技术有限公司",
    "HUAWEI Technologies Co., Ltd.",
    "Huawei Technologies Co.,Ltd",
    "ＨＵＡＷＥＩ　ＴＥＣＨＮＯＬＯＧＩＥＳ　ＣＯ．，ＬＴＤ．",
    "【华为】技术有限公司",
    " 华为技术  有限公司 ",
]


@pytest.mark.parametrize("name", HUAWEI)
def test_every_way_of_writing_huawei_has_one_key(name):
    assert company_name_key(name) == "huawei"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("中国平安保险（集团）股份有限公司", "Ping An Insurance (Group) Company of China, Ltd."),
        ("北京字节跳动科技有限公司", "字节跳动（北京）科技有限公司"),
        ("阿里巴巴（中国）有限公司", "Alibaba Group Holding Limited"),
        ("上海浦东发展银行股份有限公司", "上海浦东发展银行有限责任公司"),
        ("腾讯科技(深圳)有限公司", "腾讯科技（深圳）有限公司"),
        ("小米科技有限责任公司", "北京小米科技有限责任公司"),
        ("美的集团股份有限公司", "美的（集团）有限公司"),
    ],
)
def test_chinese_and_english_variants_of_one_company_match(a, b):
    assert company_name_key(a) == company_name_key(b)
    assert company_name_score(a, b) >= 0.9


def test_different_companies_do_not_match():
    assert company_name_key("华为技术有限公司") != company_name_key("腾讯科技（深圳）有限公司")
    assert company_name_key("华为技术有限公司") != company_name_key("华为终端有限公司")
    assert company_name_score("华为技术有限公司", "腾讯科技有限公司") < 0.5


def test_a_branch_is_not_its_head_office_but_matches_itself_in_english():
    branch = company_name_key("华为技术有限公司北京分公司")
    assert branch == "huawei#beijing"
    assert branch != company_name_key("华为技术有限公司")
    assert branch != company_name_key("华为技术有限公司上海分公司")
    assert company_name_key("Huawei Technologies Co., Ltd. Beijing Branch") == branch


def test_homophones_share_a_key_but_score_below_the_same_name():
    assert company_name_key("华伟技术有限公司") == company_name_key("华为技术有限公司")
    assert company_name_clean("华伟技术有限公司") != company_name_clean("华为技术有限公司")
    assert company_name_score("华伟技术有限公司", "华为技术有限公司") == 0.8
    assert company_name_score("深圳华为技术有限公司", "华为技术（深圳）有限公司") == 1.0


def test_a_region_that_is_the_trade_name_stays():
    assert company_name_key("中国银行股份有限公司") == "zhongguo"
    assert company_name_key("中国银行股份有限公司") != company_name_key("中国建设银行股份有限公司")


def test_empty_names_have_empty_keys():
    assert company_name_key("") == ""
    assert company_name_score("", "华为") == 0.0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("王小明", "Wang Xiaoming"),
        ("王小明", "Xiaoming Wang"),
        ("欧阳 娜娜", "Ouyang Nana"),
        ("John Smith", "Smith, John"),
    ],
)
def test_person_names_match_across_scripts_and_order(a, b):
    assert person_name_score(a, b) >= 0.9


def test_person_homophones_score_lower_than_the_same_name():
    assert person_name_key("王小明") == person_name_key("王晓明") == "wangxiaoming"
    assert person_name_score("王小明", "王晓明") == 0.8
    assert person_name_score("王小明", "王小明") == 1.0
    assert person_name_score("王小明", "李雷") < 0.5


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("13800138000", "+8613800138000"),
        ("138-0013-8000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("0086 13800138000", "+8613800138000"),
        ("（+86）138 0013 8000", "+8613800138000"),
        ("１３８００１３８０００", "+8613800138000"),
        ("010-12345678", "+861012345678"),
        ("(010) 1234 5678", "+861012345678"),
        ("0755-8888 8888", "+8675588888888"),
        ("021-68881234转123", "+862168881234"),
        ("+1 650-253-0000", "+16502530000"),
    ],
)
def test_phones_normalise_to_e164(raw, e164):
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize("raw", ["", "12345", "not a phone", "+86 138 0013"])
def test_bad_phones_are_refused(raw):
    with pytest.raises(InvalidValue):
        normalize_phone(raw)


def test_emails_are_trimmed_and_lower_cased():
    assert normalize_email("  Wang.XiaoMing@HUAWEI.com ") == "wang.xiaoming@huawei.com"
    assert normalize_email("ｗａｎｇ＠ｈｕａｗｅｉ．ｃｏｍ") == "wang@huawei.com"
    with pytest.raises(InvalidValue):
        normalize_email("wang at huawei")


def test_credit_codes_are_upper_cased_and_checksummed():
    assert normalize_credit_code(" 9144 0300-708461136t ") == "91440300708461136T"
    assert normalize_credit_code("９１４４０３００７０８４６１１３６Ｔ") == "91440300708461136T"
    with pytest.raises(InvalidValue):
        normalize_credit_code("91440300708461136X")  # wrong check character
    with pytest.raises(InvalidValue):
        normalize_credit_code("9144030070846113")  # too short


def test_credit_codes_are_checked_as_stdnum_checks_them():
    """The in-place check of compact codes answers as stdnum's validate does (valid, bad check digit, lower
    case, short, letters where digits belong)."""
    import random

    from stdnum.cn import uscc

    rnd = random.Random(5)
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    for i in range(20_000):
        code = "".join(rnd.choice(alphabet if j >= 8 else "0123456789") for j in range(17))
        code += uscc.calc_check_digit(code) if i % 2 else rnd.choice(alphabet + "IOZSV")
        if i % 7 == 0:
            code = code.lower()
        if i % 11 == 0:
            code = code[: rnd.randrange(18)]
        if i % 13 == 0:
            code = "A" + code[1:]
        try:
            ours = normalize_credit_code(code)
        except InvalidValue:
            ours = None
        try:
            theirs = uscc.validate(code)
        except Exception:
            theirs = None
        assert ours == theirs, code
