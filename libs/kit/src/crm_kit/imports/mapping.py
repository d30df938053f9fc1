"""Which column fills which field: suggested from the header row (Chinese or English), checked when chosen.

A service describes each kind of import with a `Vocabulary`: its fields, the header words people use for each
(zh-CN and en), which fields a file must fill, and how the tenant's own fields are named. Headers and words are
compared folded (NFKC, lower case, no spaces or punctuation), so "Company Name", "company_name" and
"公司名称：" all fold to one form.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from crm_kit.errors import FieldError, InvalidArgument

# Header words every vocabulary with phones or e-mails takes (a service adds its own).
PHONE_WORDS = (
    "电话",
    "联系电话",
    "手机",
    "手机号",
    "手机号码",
    "座机",
    "电话号码",
    "phone",
    "mobile",
    "tel",
    "telephone",
    "phonenumber",
    "mobilephone",
    "cellphone",
)
EMAIL_WORDS = ("邮箱", "电子邮箱", "邮件", "电子邮件", "email", "e-mail", "emailaddress", "mail")

_NOISE = re.compile(r"[\s_\-:：/()（）\[\]【】*＊.]+")
MAX_CUSTOM_KEY = 100


def fold(header: str) -> str:
    return _NOISE.sub("", unicodedata.normalize("NFKC", header or "").lower())


class Vocabulary:
    """The fields one kind of import fills.

    `fields`: field → the header words for it. `required`: fields some column must fill. The tenant's own
    fields are `<custom_prefix><key>`: those the service names (with their labels) are suggested and allowed;
    with `free_custom` any key is allowed (free attributes with no definitions)."""

    def __init__(
        self,
        name: str,
        fields: Mapping[str, Iterable[str]],
        *,
        required: Iterable[str] = (),
        custom_prefix: str = "custom_fields.",
        free_custom: bool = False,
    ):
        self.name = name
        self.fields = {f: tuple(words) for f, words in fields.items()}
        self.required = tuple(required)
        self.custom_prefix = custom_prefix
        self.free_custom = free_custom
        self._words: dict[str, str] = {}
        for f, words in self.fields.items():
            for w in (f, *words):
                self._words.setdefault(fold(w), f)

    def suggest(
        self, columns: Iterable[str], custom: Iterable[tuple[str, str, str]] = ()
    ) -> list[tuple[str, str]]:
        """(column, field) for every column; "" when nothing fits. Each field is suggested once (first column
        wins). `custom`: (key, label_zh, label_en) of the tenant's own fields."""
        table = dict(self._words)
        for key, zh, en in custom:
            for w in (key, zh, en, f"{self.custom_prefix}{key}"):
                if w:
                    table.setdefault(fold(w), f"{self.custom_prefix}{key}")
        used: set[str] = set()
        out = []
        for column in columns:
            field = table.get(fold(column), "")
            if field in used:
                field = ""
            if field:
                used.add(field)
            out.append((column, field))
        return out

    def allows(self, field: str, custom_keys: Iterable[str] = ()) -> bool:
        if field in self.fields:
            return True
        if not field.startswith(self.custom_prefix):
            return False
        key = field[len(self.custom_prefix) :]
        if self.free_custom:
            return 0 < len(key) <= MAX_CUSTOM_KEY
        return key in set(custom_keys)

    def check(
        self, columns: list[str], mapping: list[tuple[str, str]], custom_keys: Iterable[str] = ()
    ) -> list[tuple[str, str]]:
        """The chosen mapping, complete (unnamed columns are ignored) and valid, or 422 naming each problem."""
        keys = set(custom_keys)
        chosen = dict(mapping)
        errors = []
        for column, field in mapping:
            if column not in columns:
                errors.append(FieldError(f"mapping.{column}", "is not a column of the file"))
            elif field and not self.allows(field, keys):
                errors.append(FieldError(f"mapping.{column}", f"{field} is not a field of {self.name}"))
        fields = [f for f in chosen.values() if f]
        for f in sorted(set(fields)):
            if fields.count(f) > 1:
                errors.append(FieldError("mapping", f"{f} is filled by more than one column"))
        for f in self.required:
            if f not in fields:
                errors.append(FieldError("mapping", f"no column fills {f}, which is required"))
        if errors:
            detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
            raise InvalidArgument(f"the column mapping is not usable: {detail}", field_errors=errors)
        return [(c, chosen.get(c, "")) for c in columns]
