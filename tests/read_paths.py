"""What the class tests of the read step (issue 10, item 5) share: every way out of a service is called as a
user who may not see something, and nothing its answer carries may hold it."""

from __future__ import annotations

import io
from collections.abc import Awaitable
from typing import Any

import grpc
from google.protobuf import json_format

# A refusal leaks nothing: these answers count as "shows nothing".
REFUSED = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def text_of(answer: Any) -> str:
    """Everything an answer carries, as text: a message as JSON, a stream's parts, a PDF's text, file chunks."""
    if isinstance(answer, list):
        return "\n".join(text_of(part) for part in answer)
    out = json_format.MessageToJson(answer, ensure_ascii=False)
    fields = answer.DESCRIPTOR.fields_by_name
    if "content" in fields and getattr(answer, "content_type", "") == "application/pdf":
        from pypdf import PdfReader

        out += "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(answer.content)).pages)
    if "chunk" in fields and answer.WhichOneof("part") == "chunk":
        out += answer.chunk.decode("utf-8", "replace")
    return out


async def answer_text(call: Awaitable[Any]) -> str | None:
    """The answer's text, or None when the call is refused."""
    try:
        return text_of(await call)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in REFUSED:
            return None
        raise


def answered(
    services: Any, records: dict[str, tuple[Any, ...]], reads: set[str]
) -> dict[str, tuple[str, ...]]:
    """`Service/Method` of every write (a method not in `reads`) whose answer carries a record's message (`records`:
    object → its messages) → those objects: a write that answers the record answers it through the read step."""
    out = {}
    for s in services:
        for m in s.methods:
            types = {f.message_type for f in m.output_type.fields}
            objs = tuple(o for o, messages in records.items() if any(x.DESCRIPTOR in types for x in messages))
            if objs and f"{s.name}/{m.name}" not in reads:
                out[f"{s.name}/{m.name}"] = objs
    return out


async def check_read_paths(paths: dict[str, Any], w: Any, marked: dict[str, Any], markers: Any) -> None:
    """Call every read path as the admin, who must see what the path `shows` (so the check can fail), and as
    each user of `w.users` ((object, how) → metadata): an answer may be refused, but nothing it carries may hold
    one of `markers(object, w)`; a user with fields hidden always gets an answer (without those fields)."""
    leaks, unexercised, refused = [], [], []
    for name, path in paths.items():
        admin = await answer_text(path.call(w, w.admin.md))
        assert admin is not None, name
        unexercised += [(name, o) for o in path.shows if not any(v in admin for v in marked[o][1])]
        for (obj, how), md in w.users.items():
            got = await answer_text(path.call(w, md))
            if got is None:
                if how == "fields hidden":
                    refused.append((name, obj))
                continue
            leaks += [(name, obj, how, v) for v in markers(obj, w) if v in got]
    assert not unexercised, "\n".join(map(str, unexercised))
    assert not leaks, "\n".join(map(str, leaks))
    # Hiding a field never takes a whole read path away: the answer comes, without the field.
    assert not refused, "\n".join(map(str, refused))


async def check_write_answers(
    writes: dict[str, Any],
    answers: dict[str, tuple[str, ...]],
    w: Any,
    marked: dict[str, Any],
    markers: Any,
    own: str,
) -> None:
    """Each write as the admin (their answer must hold the markers the path `shows`), as each user from whom an
    answered object's marked fields are hidden and who is allowed the write (their answer comes, else the case
    tests nothing, and holds none of those values), and as the own-scope user `own`, whose answer, if any, holds
    nothing of the admin's records (the ids they give are their own input and may come back)."""
    leaks, unexercised, refused = [], [], []
    for name, path in writes.items():
        admin = await answer_text(path.call(w, w.admin.md))
        assert admin is not None, name
        unexercised += [(name, o) for o in path.shows if not any(v in admin for v in marked[o][1])]
        for obj in answers[name]:
            got = await answer_text(path.call(w, w.users[(obj, "fields hidden")]))
            if got is None:
                refused.append((name, obj))
                continue
            leaks += [(name, obj, v) for v in marked[obj][1] if v in got]
        got = await answer_text(path.call(w, w.users[(own, "own scope")]))
        leaks += [(name, own, v) for v in markers(own, w, ids=False) if got is not None and v in got]
    assert not unexercised, "\n".join(map(str, unexercised))
    assert not leaks, "\n".join(map(str, leaks))
    assert not refused, "\n".join(map(str, refused))
