"""Normal forms of what people type about customers, so that the same company, phone, e-mail, credit code or
person matches however it was written.

A Chinese enterprise name is, by the naming rules (企业名称登记管理规定), 行政区划 + 字号 + 行业 + 组织形式:
"深圳 华为 技术 有限公司". Only the trade name (字号, "华为") tells companies apart, so `company_name_key` drops the
region (leading, or in brackets anywhere), the organisational form (有限公司, 股份有限公司, Co., Ltd., …) and
trailing industry words (技术, 科技, Technologies, …), then writes what is left in toneless pinyin, so that

    华为技术有限公司 = 华为技术（深圳）有限公司 = 深圳华为技术有限公司 = HUAWEI Technologies Co., Ltd.  → "huawei"

A branch (分公司, "Beijing Branch") keeps its place after a "#": a branch is not its head office.
`company_name_clean` is the same without the romanisation ("华为"), for telling homophones apart when scoring.

Every function is pure and cheap (per-character pinyin is cached; Chinese mobile numbers skip the full parser),
because an import runs them for every one of a million rows.
"""

from __future__ import annotations

import os
import re
import unicodedata
from difflib import SequenceMatcher
from functools import lru_cache
from operator import mul

from crm_kit.normalize import InvalidValue, normalize_email, normalize_phone

# Names are read one character at a time (`_char_pinyin`), so pypinyin's phrase dictionary is never consulted:
# without it (and without the copy it makes of its character dictionary) the service idles about 45 MB
# smaller, with the same reading for every one of the dictionary's characters.
os.environ.setdefault("PYPINYIN_NO_PHRASES", "true")
os.environ.setdefault("PYPINYIN_NO_DICT_COPY", "true")
from pypinyin import Style, lazy_pinyin
from stdnum.cn import uscc
from stdnum.exceptions import ValidationError as _StdnumError

__all__ = [
    "InvalidValue",
    "company_name_clean",
    "company_name_key",
    "company_name_score",
    "normalize_credit_code",
    "normalize_email",
    "normalize_phone",
    "person_name_key",
    "person_name_score",
    "to_pinyin",
]


# ---------------------------------------------------------------- text basics

_SPACE = re.compile(r"\s+")
# Brackets of every width NFKC leaves alone, as ASCII parentheses.
_BRACKETS = str.maketrans(
    {
        "【": "(",
        "】": ")",
        "〔": "(",
        "〕": ")",
        "［": "(",
        "］": ")",
        "[": "(",
        "]": ")",
        "{": "(",
        "}": ")",
        "〈": "(",
        "〉": ")",
        "《": "(",
        "》": ")",
        "「": "(",
        "」": ")",
    }
)
_PUNCT_CATEGORIES = ("P", "S", "Z", "C")


def _nfkc(value: str) -> str:
    """Full-width to half-width (Ｈ→H, （→(, ，→,), compatibility forms folded, brackets unified, Latin lower-cased."""
    return unicodedata.normalize("NFKC", value).translate(_BRACKETS).lower().strip()


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def _strip_punct(value: str) -> str:
    """Only letters and digits (and Han characters) remain."""
    return "".join(ch for ch in value if unicodedata.category(ch)[0] not in _PUNCT_CATEGORIES)


@lru_cache(maxsize=32768)
def _char_pinyin(ch: str) -> str:
    # One reading per character (the most common one): the same character always gives the same key, which is
    # what matching needs; phrase-level heteronym resolution would cost 100x as much per name.
    return lazy_pinyin(ch, style=Style.NORMAL, errors="ignore")[0] if _is_han(ch) else ch


def to_pinyin(value: str, *, separator: str = "") -> str:
    """Han characters as toneless pinyin syllables; anything else as it is."""
    if not separator:  # nothing between the pieces: each character's reading, in order
        return "".join(map(_char_pinyin, value))
    out: list[str] = []
    latin: list[str] = []
    for ch in value:
        if _is_han(ch):
            if latin:
                out.append("".join(latin))
                latin = []
            out.append(_char_pinyin(ch))
        else:
            latin.append(ch)
    if latin:
        out.append("".join(latin))
    return separator.join(p for p in out if p)


# ---------------------------------------------------------------- regions

PROVINCES = (
    "北京",
    "天津",
    "上海",
    "重庆",
    "河北",
    "山西",
    "辽宁",
    "吉林",
    "黑龙江",
    "江苏",
    "浙江",
    "安徽",
    "福建",
    "江西",
    "山东",
    "河南",
    "湖北",
    "湖南",
    "广东",
    "海南",
    "四川",
    "贵州",
    "云南",
    "陕西",
    "甘肃",
    "青海",
    "台湾",
    "内蒙古",
    "广西",
    "西藏",
    "宁夏",
    "新疆",
    "香港",
    "澳门",
)
# Prefecture-level cities and the better-known county-level ones, without 市.
CITIES = (
    "石家庄",
    "唐山",
    "秦皇岛",
    "邯郸",
    "邢台",
    "保定",
    "张家口",
    "承德",
    "沧州",
    "廊坊",
    "衡水",
    "太原",
    "大同",
    "阳泉",
    "长治",
    "晋城",
    "朔州",
    "晋中",
    "运城",
    "忻州",
    "临汾",
    "吕梁",
    "呼和浩特",
    "包头",
    "乌海",
    "赤峰",
    "通辽",
    "鄂尔多斯",
    "呼伦贝尔",
    "巴彦淖尔",
    "乌兰察布",
    "沈阳",
    "大连",
    "鞍山",
    "抚顺",
    "本溪",
    "丹东",
    "锦州",
    "营口",
    "阜新",
    "辽阳",
    "盘锦",
    "铁岭",
    "朝阳",
    "葫芦岛",
    "长春",
    "吉林",
    "四平",
    "辽源",
    "通化",
    "白山",
    "松原",
    "白城",
    "延边",
    "哈尔滨",
    "齐齐哈尔",
    "鸡西",
    "鹤岗",
    "双鸭山",
    "大庆",
    "伊春",
    "佳木斯",
    "七台河",
    "牡丹江",
    "黑河",
    "绥化",
    "南京",
    "无锡",
    "徐州",
    "常州",
    "苏州",
    "南通",
    "连云港",
    "淮安",
    "盐城",
    "扬州",
    "镇江",
    "泰州",
    "宿迁",
    "昆山",
    "江阴",
    "张家港",
    "常熟",
    "杭州",
    "宁波",
    "温州",
    "嘉兴",
    "湖州",
    "绍兴",
    "金华",
    "衢州",
    "舟山",
    "台州",
    "丽水",
    "义乌",
    "合肥",
    "芜湖",
    "蚌埠",
    "淮南",
    "马鞍山",
    "淮北",
    "铜陵",
    "安庆",
    "黄山",
    "滁州",
    "阜阳",
    "宿州",
    "六安",
    "亳州",
    "池州",
    "宣城",
    "福州",
    "厦门",
    "莆田",
    "三明",
    "泉州",
    "漳州",
    "南平",
    "龙岩",
    "宁德",
    "晋江",
    "南昌",
    "景德镇",
    "萍乡",
    "九江",
    "新余",
    "鹰潭",
    "赣州",
    "吉安",
    "宜春",
    "抚州",
    "上饶",
    "济南",
    "青岛",
    "淄博",
    "枣庄",
    "东营",
    "烟台",
    "潍坊",
    "济宁",
    "泰安",
    "威海",
    "日照",
    "临沂",
    "德州",
    "聊城",
    "滨州",
    "菏泽",
    "郑州",
    "开封",
    "洛阳",
    "平顶山",
    "安阳",
    "鹤壁",
    "新乡",
    "焦作",
    "濮阳",
    "许昌",
    "漯河",
    "三门峡",
    "南阳",
    "商丘",
    "信阳",
    "周口",
    "驻马店",
    "武汉",
    "黄石",
    "十堰",
    "宜昌",
    "襄阳",
    "鄂州",
    "荆门",
    "孝感",
    "荆州",
    "黄冈",
    "咸宁",
    "随州",
    "恩施",
    "长沙",
    "株洲",
    "湘潭",
    "衡阳",
    "邵阳",
    "岳阳",
    "常德",
    "张家界",
    "益阳",
    "郴州",
    "永州",
    "怀化",
    "娄底",
    "广州",
    "韶关",
    "深圳",
    "珠海",
    "汕头",
    "佛山",
    "江门",
    "湛江",
    "茂名",
    "肇庆",
    "惠州",
    "梅州",
    "汕尾",
    "河源",
    "阳江",
    "清远",
    "东莞",
    "中山",
    "潮州",
    "揭阳",
    "云浮",
    "南宁",
    "柳州",
    "桂林",
    "梧州",
    "北海",
    "防城港",
    "钦州",
    "贵港",
    "玉林",
    "百色",
    "贺州",
    "河池",
    "来宾",
    "崇左",
    "海口",
    "三亚",
    "三沙",
    "儋州",
    "成都",
    "自贡",
    "攀枝花",
    "泸州",
    "德阳",
    "绵阳",
    "广元",
    "遂宁",
    "内江",
    "乐山",
    "南充",
    "眉山",
    "宜宾",
    "广安",
    "达州",
    "雅安",
    "巴中",
    "资阳",
    "贵阳",
    "六盘水",
    "遵义",
    "安顺",
    "毕节",
    "铜仁",
    "昆明",
    "曲靖",
    "玉溪",
    "保山",
    "昭通",
    "丽江",
    "普洱",
    "临沧",
    "大理",
    "拉萨",
    "日喀则",
    "昌都",
    "林芝",
    "西安",
    "铜川",
    "宝鸡",
    "咸阳",
    "渭南",
    "延安",
    "汉中",
    "榆林",
    "安康",
    "商洛",
    "兰州",
    "嘉峪关",
    "金昌",
    "白银",
    "天水",
    "武威",
    "张掖",
    "平凉",
    "酒泉",
    "庆阳",
    "定西",
    "陇南",
    "西宁",
    "海东",
    "银川",
    "石嘴山",
    "吴忠",
    "固原",
    "中卫",
    "乌鲁木齐",
    "克拉玛依",
    "吐鲁番",
    "哈密",
    "喀什",
    "伊犁",
    "雄安",
    "浦东",
    "滨海",
)
_REGION_SUFFIXES = (
    "特别行政区",
    "维吾尔自治区",
    "壮族自治区",
    "回族自治区",
    "自治区",
    "省",
    "市",
    "区",
    "县",
)
_REGION_NAMES = frozenset(PROVINCES) | frozenset(CITIES)
# Longest first, so 黑龙江省 is taken before 黑龙江 and 内蒙古自治区 before 内蒙古.
_REGION_PATTERN = re.compile(
    "^(?:"
    + "|".join(sorted((re.escape(n) for n in _REGION_NAMES), key=len, reverse=True))
    + ")(?:"
    + "|".join(_REGION_SUFFIXES)
    + ")?"
)
_LATIN_REGIONS = frozenset(
    {
        "china",
        "prc",
        "beijing",
        "shanghai",
        "shenzhen",
        "guangzhou",
        "hangzhou",
        "tianjin",
        "chongqing",
        "hong kong",
        "hongkong",
        "macau",
        "macao",
        "taiwan",
        "suzhou",
        "nanjing",
        "wuhan",
        "chengdu",
        "xian",
        "guangdong",
        "jiangsu",
        "zhejiang",
        "shandong",
        "fujian",
        "xiamen",
        "qingdao",
        "dalian",
        "shenyang",
    }
)


def _is_region(value: str) -> bool:
    v = value.strip()
    if not v:
        return False
    if v in _LATIN_REGIONS or v in ("中国", "中华人民共和国", "集团"):
        return True
    m = _REGION_PATTERN.match(v)
    return bool(m and m.end() == len(v))


def _strip_leading_regions(value: str) -> str:
    """深圳市华为… → 华为…; 广东省深圳市华为… → 华为…; never strips the whole name."""
    for _ in range(3):
        m = _REGION_PATTERN.match(value)
        if not m or m.end() == len(value):
            break
        value = value[m.end() :]
    if value.startswith("中国") and len(value) > 2:
        value = value[2:]
    return value


# ---------------------------------------------------------------- companies

# Organisational forms (组织形式), longest first; stripped from the end, repeatedly.
_ZH_FORMS = (
    "股份有限公司",
    "有限责任公司",
    "集团有限公司",
    "集团股份有限公司",
    "控股有限公司",
    "有限公司",
    "股份公司",
    "合伙企业(有限合伙)",
    "有限合伙",
    "合伙企业",
    "个人独资企业",
    "集团公司",
    "总公司",
    "公司",
    "集团",
    "工作室",
    "事务所",
    "研究院",
    "研究所",
    "中心",
    "厂",
)
_EN_FORMS = (
    "company limited",
    "co ltd",
    "co limited",
    "co inc",
    "corporation",
    "incorporated",
    "limited",
    "company",
    "corp",
    "inc",
    "ltd",
    "llc",
    "plc",
    "gmbh",
    "ag",
    "sa",
    "bv",
    "pte",
    "pty",
    "kk",
    "co",
    "group",
    "holdings",
    "holding",
    "of china",
    "china",
)
# Industry words (行业) in both languages: dropped from the end of the trade name, so 华为技术 = Huawei Technologies.
_ZH_INDUSTRY = (
    "信息技术",
    "网络科技",
    "电子商务",
    "科技发展",
    "技术",
    "科技",
    "信息",
    "网络",
    "软件",
    "电子",
    "通信",
    "通讯",
    "电气",
    "电器",
    "机械",
    "设备",
    "贸易",
    "商贸",
    "实业",
    "投资",
    "控股",
    "发展",
    "国际",
    "工业",
    "制造",
    "生物",
    "医药",
    "医疗",
    "保险",
    "银行",
    "证券",
    "物流",
    "咨询",
    "服务",
    "管理",
    "传媒",
    "文化",
    "教育",
    "建设",
    "工程",
    "地产",
    "置业",
    "能源",
    "汽车",
    "食品",
    "化工",
    "材料",
    "智能",
    "数据",
    "云计算",
    "航空",
    "电力",
    "新能源",
)
_EN_INDUSTRY = (
    "information technology",
    "technologies",
    "technology",
    "tech",
    "information",
    "networks",
    "network",
    "software",
    "electronics",
    "electronic",
    "communications",
    "communication",
    "telecom",
    "electric",
    "machinery",
    "equipment",
    "trading",
    "trade",
    "industrial",
    "industries",
    "industry",
    "investment",
    "development",
    "international",
    "manufacturing",
    "biotech",
    "pharmaceutical",
    "pharma",
    "medical",
    "insurance",
    "bank",
    "securities",
    "logistics",
    "consulting",
    "services",
    "service",
    "management",
    "media",
    "culture",
    "education",
    "construction",
    "engineering",
    "real estate",
    "energy",
    "automotive",
    "auto",
    "food",
    "chemical",
    "materials",
    "intelligent",
    "data",
    "cloud",
    "aviation",
    "power",
    "new energy",
    "science",
    "and",
    "&",
)
_BRANCH_ZH = re.compile(r"^(.*?(?:公司|集团))(.+?)(?:分公司|办事处|分部|营业部|分行|支行|分店)$")
_BRANCH_EN = re.compile(r"^(.*?),?\s+([a-z ]+?)\s+(?:branch|office|representative office)$")
_BRACKETED = re.compile(r"\(([^()]*)\)")


# The English forms and industry words as whole trailing words (built once, not per name).
_EN_FORMS_WORDS = tuple(" " + f for f in _EN_FORMS)
_EN_INDUSTRY_WORDS = tuple(" " + w for w in _EN_INDUSTRY)


def _strip_forms(value: str, forms: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        if not value.endswith(forms):  # one C-level test for the usual case: nothing (more) to strip
            break
        for form in forms:
            if value.endswith(form) and len(value) > len(form):
                value = value[: -len(form)].rstrip(" ,.-")
                changed = True
                break
    return value


def _split_branch(name: str) -> tuple[str, str]:
    compact = name.replace(" ", "")
    m = _BRANCH_ZH.match(compact)
    if m:
        branch = _strip_leading_regions(m.group(2)) if not _is_region(m.group(2)) else m.group(2)
        region = _REGION_PATTERN.match(branch)
        if region:
            branch = branch[: region.end()]
            for suffix in _REGION_SUFFIXES:
                if branch.endswith(suffix) and len(branch) > len(suffix):
                    branch = branch[: -len(suffix)]
        return m.group(1), branch
    m = _BRANCH_EN.match(name)
    if m:
        return m.group(1), m.group(2).strip()
    return name, ""


def _clean_brackets(value: str) -> str:
    """Bracketed regions and forms vanish ("（深圳）", "(集团)", "(China)"); other bracketed words stay, unbracketed."""

    def keep(m: re.Match[str]) -> str:
        inner = m.group(1).strip()
        if _is_region(inner) or inner in _ZH_FORMS or inner in _EN_FORMS:
            return " "
        return f" {inner} "

    previous = None
    while previous != value:
        previous, value = value, _BRACKETED.sub(keep, value)
    return value.replace("(", " ").replace(")", " ")


def _company_core(name: str) -> tuple[str, str]:
    """The trade name (字号) in its own script, and the branch ("" for a head office)."""
    text = _nfkc(name)
    if not text:
        return "", ""
    text = _clean_brackets(text)
    text = _SPACE.sub(" ", text).strip()
    base, branch = _split_branch(text)
    # Latin forms: punctuation off first ("Co., Ltd." → "co ltd").
    base = _SPACE.sub(" ", re.sub(r"[^\w&\s]", " ", base)).strip()
    base = _strip_forms(base, _ZH_FORMS)
    base = _strip_forms(base, _EN_FORMS_WORDS)
    base = _strip_forms(base.replace(" ", "") if _has_han(base) else base, _ZH_FORMS)
    with_region = base
    base = _strip_leading_regions(base) if _has_han(base) else _strip_latin_regions(base)
    if (
        base in _ZH_INDUSTRY
    ):  # 中国银行: the region is part of the trade name when only an industry word is left
        base = with_region
    base = _strip_forms(base, _ZH_INDUSTRY)
    base = _strip_forms(base, _EN_INDUSTRY_WORDS)
    base = _strip_punct(base.replace(" ", "")) if _has_han(base) else base
    return base.strip(), _strip_punct(branch)


def _has_han(value: str) -> bool:
    return any(_is_han(ch) for ch in value)


def _strip_latin_regions(value: str) -> str:
    words = value.split(" ")
    while len(words) > 1 and words[0] in _LATIN_REGIONS:
        words = words[1:]
    return " ".join(words)


@lru_cache(maxsize=65536)
def company_name_parts(name: str) -> tuple[str, str]:
    """(`company_name_clean`, `company_name_key`) of a name, from one pass over it (cached: scoring compares
    the same stored names again and again)."""
    core, branch = _company_core(name)
    clean = _strip_punct(core)
    key = _strip_punct(to_pinyin(core))
    if branch:
        clean = f"{clean}#{branch}"
        key = f"{key}#{_strip_punct(to_pinyin(branch))}"
    return clean, key


def company_name_clean(name: str) -> str:
    """The trade name in its own script: "深圳华为技术有限公司" → "华为" (for scoring; keeps homophones apart)."""
    return company_name_parts(name)[0]


def company_name_key(name: str) -> str:
    """The matching key of a company name: its trade name in toneless pinyin, lower case, letters and digits
    only; a branch adds "#<branch>". Equal keys = the same company however written (see the module doc)."""
    return company_name_parts(name)[1]


def company_name_score(a: str, b: str) -> float:
    """How alike two company names are, 0..1: 1 for the same trade name in the same script, 0.9 for the same
    key across scripts (华为 / Huawei), 0.8 for Chinese homophones (华为 / 华伟), else the keys' similarity."""
    clean_a, key_a = company_name_parts(a)
    clean_b, key_b = company_name_parts(b)
    if not clean_a or not clean_b:
        return 0.0
    if clean_a == clean_b:
        return 1.0
    if key_a == key_b:
        return 0.8 if _has_han(clean_a) and _has_han(clean_b) else 0.9
    return round(SequenceMatcher(None, key_a, key_b).ratio() * 0.85, 3)


def best_score_of_another_key(key: str) -> float:
    """The highest `company_name_score` a name can reach against a name of this key when its own key is
    another one: the keys' SequenceMatcher ratio is 2M/(la+lb) with M matched characters, at most
    2la/(2la+1) for keys that differ (the other key is this one plus one character), so the score is at most
    0.85 of that. A rule whose threshold is above it can only be met by names of the same key: its candidates
    are found by key equality alone (a B-tree look-up), without a trigram probe."""
    if not key:
        return 0.0
    return round(0.85 * (2 * len(key)) / (2 * len(key) + 1), 3)


# ---------------------------------------------------------------- people

_NAME_SEPARATORS = re.compile(r"[\s·•.,\-_'’]+")


def _person_tokens(name: str) -> list[str]:
    text = _nfkc(name)
    tokens: list[str] = []
    for part in _NAME_SEPARATORS.split(text):
        if not part:
            continue
        if _has_han(part):
            tokens.extend(_char_pinyin(ch) for ch in part if _is_han(ch) or ch.isalnum())
        else:
            tokens.append(_strip_punct(part))
    return [t for t in tokens if t]


def person_name_key(name: str) -> str:
    """A person's name as toneless pinyin/Latin letters in written order: 王小明 = Wang Xiaoming = "wangxiaoming"."""
    return "".join(_person_tokens(name))


def person_name_score(a: str, b: str) -> float:
    """1 when the names are the same (either order: "Xiaoming Wang" = 王小明), 0.9 when only the script differs
    in a homophone, else the similarity of the keys."""
    ta, tb = _person_tokens(a), _person_tokens(b)
    if not ta or not tb:
        return 0.0
    ka, kb = "".join(ta), "".join(tb)
    clean_a, clean_b = _strip_punct(_nfkc(a)), _strip_punct(_nfkc(b))
    if clean_a == clean_b:
        return 1.0
    reversed_b = "".join(tb[-1:] + tb[:-1])
    reversed_a = "".join(ta[-1:] + ta[:-1])
    if ka in (kb, reversed_b) or kb == reversed_a:
        return 0.9 if _has_han(clean_a) != _has_han(clean_b) or not _has_han(clean_a) else 0.8
    return round(SequenceMatcher(None, ka, kb).ratio() * 0.85, 3)


# ---------------------------------------------------------------- credit codes (phones, e-mails: crm_kit.normalize)


_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUES = {c: i for i, c in enumerate(_USCC_ALPHABET)}
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_USCC_COMPACT = re.compile(r"[0-9]{8}[0-9A-HJ-NPQRTUWXY]{10}")


def normalize_credit_code(raw: str) -> str:
    """A unified social credit code (统一社会信用代码, GB 32100-2015): 18 characters, upper case, check digit
    verified. Raises InvalidValue otherwise."""
    text = unicodedata.normalize("NFKC", raw or "")
    if _USCC_COMPACT.fullmatch(text):
        # Already compact (what stdnum's validate would return unchanged): its checks, without its cleaning.
        total = sum(map(mul, map(_USCC_VALUES.__getitem__, text[:17]), _USCC_WEIGHTS))
        if text[17] == _USCC_ALPHABET[(31 - total) % 31]:
            return text
    try:
        return str(uscc.validate(text))
    except _StdnumError as exc:
        raise InvalidValue(f"is not a valid unified social credit code ({exc})") from exc
