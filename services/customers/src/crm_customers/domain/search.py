"""Keyword search: what the search columns hold, and the WHERE clause of a query.

Three columns per record, written on every create and update:
- `search_name`: the names (name, alt/Latin name) NFKC-folded and lower-cased, plus the pinyin of Chinese
  names (so "huawei" finds 华为). Trigram GIN: `LIKE '%q%'` for queries of 3+ characters, and word similarity
  (`q <% search_name`) so Latin names tolerate a typo ("Alibba" finds Alibaba).
- `search_grams`: every 1- and 2-character piece of the names. pg_trgm needs three characters, and most
  Chinese keywords are two ("华为"): those queries look the piece up in this array (GIN, `@>`).
- `search_extra`: phone digits, e-mails and searchable custom field values (trigram GIN). A caller for whom
  any of these is hidden searches names only, so a search can never reveal a hidden value.

Names are one column for both names of a record (name and alt/Latin name). A caller for whom one of them is
hidden searches the other only: the indexes still narrow the rows, and a recheck on the visible name's own
column (folded the same way, no pinyin) decides; for a caller who sees neither, names are not searched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, false, func, literal, literal_column, or_, text

from crm_customers.normalize import to_pinyin

MAX_QUERY = 100
_SPACE = re.compile(r"\s+")
_PHONE_LIKE = re.compile(r"^\+?[\d\s\-().]{3,}$")


def fold(value: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", value or "").lower()).strip()


def _has_han(value: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in value)


def name_text(*names: str) -> str:
    parts = [fold(n) for n in names if n and n.strip()]
    pinyin = [to_pinyin(p).replace(" ", "") for p in parts if _has_han(p)]
    return " | ".join(parts + pinyin)


def name_grams(*names: str) -> list[str]:
    grams: set[str] = set()
    for name in names:
        for word in fold(name).split(" "):
            grams.update(word)
            grams.update(word[i : i + 2] for i in range(len(word) - 1))
    return sorted(grams)


def extra_text(phones: Iterable[str], emails: Iterable[str], values: Iterable[str]) -> str:
    parts = []
    for p in phones:
        digits = re.sub(r"\D", "", p)
        if digits:
            parts.append(digits)
    parts.extend(fold(e) for e in emails if e)
    parts.extend(fold(v) for v in values if v)
    return " | ".join(parts)


def normalize_query(query: str) -> str:
    q = fold(query)[:MAX_QUERY]
    if _PHONE_LIKE.match(q):
        return re.sub(r"\D", "", q)
    return q


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def folded(column: Any) -> Any:
    """`fold` in SQL (NFKC, lower case), for a recheck on one name column."""
    return func.lower(func.normalize(column, literal_column("NFKC")))


def clause(model: Any, query: str, *, include_extra: bool, names: Sequence[Any] | None = None) -> Any:
    """Rows matching the keyword (the caller adds tenant, scope and liveness). `names`: None, every name may be
    searched; else the name columns the caller may see (possibly none), which the match must come from."""
    q = normalize_query(query)
    if not q:
        return literal(True)
    like = f"%{_escape_like(q)}%"
    conditions = []
    if names is None or names:
        if len(q) < 3:
            by_name = model.search_grams.contains([q])
        else:
            by_name = model.search_name.like(like)
            if not _has_han(q):
                by_name = or_(by_name, literal(q).op("<%")(model.search_name))
        if names:
            rechecks = [folded(c).like(like) for c in names]
            if len(q) >= 3 and not _has_han(q):
                rechecks.extend(literal(q).op("<%")(folded(c)) for c in names)
            by_name = and_(by_name, or_(*rechecks))
        conditions.append(by_name)
    if include_extra and len(q) >= 3:
        conditions.append(model.search_extra.like(like))
    return or_(*conditions) if conditions else false()


# pg_trgm's default word-similarity threshold (0.6) misses one-letter typos in short names ("Alibba" scores
# 0.57 against "Alibaba Group"); 0.5 finds them and still keeps unrelated names out.
WORD_SIMILARITY_THRESHOLD = 0.5


async def prepare(session: Any, query: str) -> None:
    """Set the connection's similarity threshold before a typo-tolerant search (a setting of the session)."""
    q = normalize_query(query)
    if len(q) >= 3 and not _has_han(q):
        await session.execute(text(f"SET pg_trgm.word_similarity_threshold = {WORD_SIMILARITY_THRESHOLD}"))


def score(model: Any, query: str) -> Any:
    """Relevance of a match, 0..1: word similarity of the query to the names."""
    q = normalize_query(query)
    return func.word_similarity(q, model.search_name)
