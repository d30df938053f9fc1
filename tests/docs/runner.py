"""Runs the examples of a Markdown file against a running gateway, in order, as a reader would type them.

What a doc writes, and what the runner does with it:

- A ```http block is one request or several separated by `###` lines (the REST-client style): the request
  line `METHOD /path?query`, header lines `Name: value`, a blank line, the JSON body. Comment lines (`#` or
  `//`) before the request line may say `# @name foo` (the answer is kept as `foo`), `# → 409` (the status
  expected; without one any 2xx passes) and `# → ETag: "1"` (a header the answer carries; one per line).
- `curl` lines of a ```sh block (`\\` continues a line) are requests too: `-X`/`-XPOST`, `-H`, `-d` (a body
  without `-X` is a POST), the host `localhost:8000` being the gateway. A comment after the command may say
  `# → 409` (the status) or `# → access_token, version` (keys the answer has). A comment line `# @name foo` names the
  next command's answer.
- `{{name}}` in an http block (`$NAME` or `${NAME}` in curl) is a value of the context: `token` and
  `ACCESS_TOKEN` (also `refresh_token` / `REFRESH_TOKEN`) after a successful `POST /api/v1/auth/token` or
  `/auth/refresh`, and every named answer by path: `{{acme.id}}`, `{{page.items.0.id}}`,
  `{{page.next_cursor}}`. Before the first example the runner signs up a fresh company of its own and signs
  in, so `{{token}}` works in a file that does not sign in itself.
- `someone@example.com` becomes `someone+<run>@example.com` everywhere in the file (requests and answers), so
  files and runs never collide on an address.
- A ```json block right after an http block (prose between is fine, a heading is not) is the answer shown to
  readers: the real answer must have every key it shows, recursively, with equal values, except where it
  shows a placeholder: `"…"` or `"<anything>"` stands for any value, and `…` inside a string for any
  characters (`"crm_…"`). A list must have the same length unless its last element is `"…"` (then the shown
  elements are its first ones). `{{name.path}}` works in answers too (`"id": "{{acme.id}}"`).
- `<!-- docs-test: skip: <reason> -->` on the line before a block leaves the block out (e.g. a code that
  arrives by mail).

A failed example does not stop the file: the runner goes on (later examples may fail for want of a named
answer) and reports every failure with its file and line.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# How long a new company's defaults may take to appear (they follow sign-up through an event).
COMPANY_READY_SECONDS = 20.0

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<reason>.+?)\s*-->")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")
SHELL_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
EMAIL = re.compile(r"(?<![\w.+%-])([A-Za-z0-9._%-]+)@example\.com\b")
HEADER_EXPECTED = re.compile(r"^(?:→|->)\s*([A-Za-z][\w-]*):\s*(.+)$")
STATUS = re.compile(r"^(?:→|->)\s*(\d{3})\b")
NAME = re.compile(r"^@name\s*=?\s*([A-Za-z_][\w-]*)\s*$")
REQUEST_LINE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(\S+)(?:\s+HTTP/[\d.]+)?\s*$")
TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP header name (RFC 9110)
GATEWAY_HOSTS = ("localhost:8000", "127.0.0.1:8000")
ELLIPSIS = "…"


class ExampleError(Exception):
    """An example the runner cannot run as written (not a wrong answer: a wrong example)."""


@dataclass
class Block:
    lang: str
    text: str
    line: int  # of the first content line, 1-based
    skip: str | None = None
    heading_before: bool = False  # a heading between the previous block and this one


@dataclass
class Example:
    source: str  # "path:line"
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str | None
    name: str | None = None
    status: int | None = None
    answer_keys: list[str] = field(default_factory=list)
    answer_headers: list[tuple[str, str]] = field(default_factory=list)
    answer: Block | None = None  # the ```json block shown after it
    skip: str | None = None
    curl: bool = False
    error: str | None = None  # the block cannot be read as an example


@dataclass
class Outcome:
    example: Example
    status: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        e = self.example
        state = "skipped: " + e.skip if e.skip else ("ok" if self.ok else "FAILED")
        request = "an unreadable example" if e.error else f"{e.method} {e.url} → {self.status}"
        text = f"{e.source}: {request} {state}"
        return text + "".join(f"\n    {p}" for p in self.problems)


# --- reading a Markdown file ---------------------------------------------------------------------------------


def blocks(markdown: str) -> list[Block]:
    found: list[Block] = []
    lines = markdown.splitlines()
    last_text = ""
    heading = False
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last_text = lines[i].strip()
                heading = heading or bool(HEADING.match(lines[i]))
            i += 1
            continue
        indent, fence, info = len(m.group("indent")), m.group("fence"), m.group("info").lower()
        start = i + 1
        i += 1
        content: list[str] = []
        while i < len(lines) and not (
            lines[i].strip().startswith(fence[0] * len(fence)) and lines[i].strip().strip(fence[0]) == ""
        ):
            line = lines[i]
            content.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            i += 1
        i += 1  # the closing fence
        skip = SKIP.search(last_text)
        found.append(
            Block(info, "\n".join(content), start + 1, skip.group("reason") if skip else None, heading)
        )
        last_text, heading = "", False
    return found


def _comment(line: str) -> str | None:
    s = line.strip()
    if s.startswith("#") and not s.startswith("###"):
        return s[1:].strip()
    if s.startswith("//"):
        return s[2:].strip()
    return None


def _directive(comment: str, example_or_pending: dict[str, Any]) -> None:
    if m := NAME.match(comment):
        example_or_pending["name"] = m.group(1)
    elif m := STATUS.match(comment):
        example_or_pending["status"] = int(m.group(1))
    elif m := HEADER_EXPECTED.match(comment):
        example_or_pending.setdefault("answer_headers", []).append((m.group(1), m.group(2).strip()))
    elif comment.startswith(("→", "->")):
        words = comment.lstrip("→->").replace(",", " ").split()
        example_or_pending["answer_keys"] = [w for w in words if re.fullmatch(r"[A-Za-z_]\w*", w)]


def http_examples(block: Block, path: str) -> list[Example]:
    examples: list[Example] = []
    chunk: list[tuple[int, str]] = []
    for offset, line in enumerate([*block.text.split("\n"), "###"]):
        if line.strip().startswith("###"):
            if any(text.strip() for _, text in chunk):
                examples.append(_http_example(chunk, path, block))
            chunk = []
        else:
            chunk.append((block.line + offset, line))
    return examples


def _http_example(chunk: list[tuple[int, str]], path: str, block: Block) -> Example:
    pending: dict[str, Any] = {}
    rest = list(chunk)
    while rest and (not rest[0][1].strip() or _comment(rest[0][1]) is not None):
        if (c := _comment(rest[0][1])) is not None:
            _directive(c, pending)
        rest.pop(0)
    if not rest:
        raise ExampleError(f"{path}:{chunk[0][0]}: an http block without a request line")
    number, request_line = rest.pop(0)
    m = REQUEST_LINE.match(request_line.strip())
    if not m:
        raise ExampleError(f"{path}:{number}: not a request line: {request_line!r}")
    headers: list[tuple[str, str]] = []
    while rest and rest[0][1].strip():
        n, line = rest.pop(0)
        if (c := _comment(line)) is not None:
            _directive(c, pending)
            continue
        name, sep, value = line.partition(":")
        if not sep or not TOKEN.fullmatch(name.strip()):
            raise ExampleError(
                f"{path}:{n}: not a header: {line!r} (an http block is a request line, headers, a blank line "
                "and the body; the answer goes in a ```json block after it)"
            )
        headers.append((name.strip(), value.strip()))
    body = "\n".join(line for _, line in rest).strip() or None
    return Example(f"{path}:{number}", m.group(1), m.group(2), headers, body, skip=block.skip, **pending)


def curl_examples(block: Block, path: str) -> list[Example]:
    examples: list[Example] = []
    pending: dict[str, Any] = {}
    lines = block.text.split("\n")
    i = 0
    while i < len(lines):
        number = block.line + i
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        s = line.strip()
        if (c := _comment(s)) is not None:
            _directive(c, pending)
            continue
        if not s.startswith("curl "):
            continue
        try:
            tokens = shlex.split(s, comments=False)
        except ValueError as exc:
            raise ExampleError(f"{path}:{number}: cannot read the curl line: {exc}") from exc
        examples.append(_curl_example(tokens, f"{path}:{number}", pending, block.skip))
        pending = {}
    return examples


def _curl_example(tokens: list[str], source: str, pending: dict[str, Any], skip: str | None) -> Example:
    method: str | None = None
    url: str | None = None
    headers: list[tuple[str, str]] = []
    body: str | None = None
    i = 1
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("#"):
            comment = " ".join(tokens[i:])[1:].strip()
            _directive(comment, pending)
            break
        if t in ("-X", "--request"):
            method, i = tokens[i + 1], i + 2
            continue
        if t.startswith("-X"):
            method = t[2:]
        elif t in ("-H", "--header"):
            headers.append(_header(tokens[i + 1], source))
            i += 2
            continue
        elif t.startswith("-H"):
            headers.append(_header(t[2:], source))
        elif t in ("-d", "--data", "--data-raw", "--data-binary"):
            body, i = tokens[i + 1], i + 2
            continue
        elif t == "--json":
            body, i = tokens[i + 1], i + 2
            headers += [("Content-Type", "application/json"), ("Accept", "application/json")]
            continue
        elif re.fullmatch(r"-[sSifvL]+|--(silent|show-error|fail|include|location|compressed)", t):
            pass
        elif t.startswith("-"):
            raise ExampleError(f"{source}: curl option {t} is not one the docs runner understands")
        else:
            url = t
        i += 1
    if url is None:
        raise ExampleError(f"{source}: a curl line without a URL")
    for scheme in ("http://", "https://"):
        url = url.removeprefix(scheme)
    host, slash, rest = url.partition("/")
    if host not in GATEWAY_HOSTS:
        raise ExampleError(f"{source}: curl to {host}: the gateway is localhost:8000")
    method = (method or ("POST" if body is not None else "GET")).upper()
    return Example(source, method, slash + rest, headers, body, skip=skip, curl=True, **pending)


def _header(text: str, source: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise ExampleError(f"{source}: not a header: {text!r}")
    return name.strip(), value.strip()


def examples(markdown: str, path: str) -> list[Example]:
    """Every example of a Markdown file, in order, each with the answer shown after it."""
    found: list[Example] = []
    previous: list[Example] = []
    for block in blocks(markdown):
        if block.lang == "json" and previous and not block.heading_before:
            previous[-1].answer = block
            previous = []
            continue
        try:
            if block.lang == "http":
                previous = http_examples(block, path)
            elif block.lang in ("sh", "bash", "shell", "console"):
                previous = curl_examples(block, path)
            else:
                previous = []
        except (
            ExampleError
        ) as exc:  # a block the runner cannot read is a failed example, the others still run
            previous = [Example(f"{path}:{block.line}", "?", "?", [], None, skip=block.skip, error=str(exc))]
        found += previous
    return found


# --- running them -----------------------------------------------------------------------------------------------


class Runner:
    """Runs a file's examples against `client` (the gateway), in a context of its own."""

    def __init__(self, client: httpx.AsyncClient, run_id: str | None = None):
        self.client = client
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.context: dict[str, Any] = {}

    def emails(self, text: str) -> str:
        return EMAIL.sub(lambda m: f"{m.group(1)}+{self.run_id}@example.com", text)

    def lookup(self, dotted: str) -> Any:
        head, *path = dotted.split(".")
        if head not in self.context:
            raise ExampleError(
                f"{{{{{dotted}}}}}: nothing named {head!r} yet (known: {sorted(self.context)})"
            )
        value = self.context[head]
        for part in path:
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise ExampleError(f"{{{{{dotted}}}}}: {head} has no {part!r} there")
        if value is None:
            raise ExampleError(f"{{{{{dotted}}}}} is null")
        return value

    def fill(self, text: str, curl: bool = False) -> str:
        def value(dotted: str) -> str:
            v = self.lookup(dotted)
            return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

        text = VARIABLE.sub(lambda m: value(m.group(1)), self.emails(text))
        if curl:
            text = SHELL_VARIABLE.sub(lambda m: value(m.group(1) or m.group(2)), text)
        return text

    async def sign_up_company(self) -> None:
        """A fresh company of the runner's own, signed in: `{{token}}` before the file signs in itself."""
        email, password = f"docs-runner.{self.run_id}@example.com", f"docs runner {self.run_id}"
        signed_up = await self.client.post(
            "/api/v1/auth/signup",
            json={
                "tenant_name": f"文档示例 {self.run_id}",
                "email": email,
                "password": password,
                "name": "文档",
            },
        )
        assert signed_up.is_success, signed_up.text
        tokens = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert tokens.is_success, tokens.text
        self._signed_in(tokens.json())
        await self.company_ready()

    def _signed_in(self, answer: dict[str, Any]) -> None:
        self.context["token"] = self.context["ACCESS_TOKEN"] = answer["access_token"]
        if answer.get("refresh_token"):
            self.context["refresh_token"] = self.context["REFRESH_TOKEN"] = answer["refresh_token"]

    async def run(self, example: Example) -> Outcome:
        outcome = Outcome(example)
        if example.skip:
            return outcome
        if example.error:
            outcome.problems.append(example.error)
            return outcome
        try:
            url = self.fill(example.url, example.curl)
            headers = [(k, self.fill(v, example.curl)) for k, v in example.headers]
            body = self.fill(example.body, example.curl).encode() if example.body is not None else None
        except ExampleError as exc:
            outcome.problems.append(str(exc))
            return outcome
        if body is not None and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "application/json"))
        try:
            response = await self.client.request(
                example.method, url, headers=[(k, v.encode()) for k, v in headers], content=body
            )
        except httpx.HTTPError as exc:
            outcome.problems.append(f"the request cannot be sent: {exc!r}")
            return outcome
        outcome.status = response.status_code
        answer: Any = None
        if "json" in response.headers.get("content-type", ""):
            answer = response.json()
        if example.status is not None:
            if response.status_code != example.status:
                outcome.problems.append(
                    f"expected {example.status}, got {response.status_code}: {response.text[:600]}"
                )
        elif not response.is_success:
            outcome.problems.append(f"expected a 2xx, got {response.status_code}: {response.text[:600]}")
        if example.name:
            self.context[example.name] = answer
        for name, shown_value in example.answer_headers:
            try:
                expected = self.fill(shown_value, example.curl)
            except ExampleError as exc:
                outcome.problems.append(str(exc))
                continue
            real = response.headers.get(name)
            if real is None or differences(expected, real):
                outcome.problems.append(f"header {name}: shown {expected!r}, got {real!r}")
        for key in example.answer_keys:
            if not isinstance(answer, dict) or key not in answer:
                outcome.problems.append(f"the answer has no {key!r}: {response.text[:300]}")
        if example.answer is not None:
            try:
                shown = json.loads(self.fill(example.answer.text))
            except (ValueError, ExampleError) as exc:
                outcome.problems.append(
                    f"the answer shown at line {example.answer.line} cannot be read: {exc}"
                )
            else:
                outcome.problems += [
                    f"the answer shown at line {example.answer.line}: {p}" for p in differences(shown, answer)
                ]
        path = url.partition("?")[0]
        if (
            response.is_success
            and example.method == "POST"
            and path in ("/api/v1/auth/token", "/api/v1/auth/refresh")
            and isinstance(answer, dict)
            and answer.get("access_token")
        ):
            self._signed_in(answer)
            if path == "/api/v1/auth/token":
                await self.company_ready()
        return outcome

    async def company_ready(self) -> None:
        """A new company's defaults (its duplicate rules and pipeline) are set up from identity's TenantCreated
        event, a moment after sign-up; the examples read like a person who signs in a moment later would see it,
        so wait until they are there before the next example (the defaults themselves are tested elsewhere)."""
        headers = {"Authorization": f"Bearer {self.context['token']}"}
        deadline = asyncio.get_running_loop().time() + COMPANY_READY_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            rules = await self.client.get("/api/v1/duplicate-rules", headers=headers)
            pipelines = await self.client.get("/api/v1/pipelines", headers=headers)
            if rules.status_code == 200 and pipelines.status_code == 200:
                if len(rules.json()["items"]) >= 3 and pipelines.json()["items"]:
                    return
            else:
                return  # the credential may not read them: nothing to wait for
            await asyncio.sleep(0.1)


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and (value == ELLIPSIS or re.fullmatch(r"<[^<>]+>", value) is not None)


def differences(shown: Any, real: Any, where: str = "$") -> list[str]:
    """How the real answer differs from the one shown (empty: it has everything shown)."""
    if is_placeholder(shown):
        return []
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{where}: shown an object, got {json.dumps(real, ensure_ascii=False)[:200]}"]
        out: list[str] = []
        for key, value in shown.items():
            if key not in real:
                out.append(f"{where}.{key}: missing from the answer (it has {sorted(real)})")
            else:
                out += differences(value, real[key], f"{where}.{key}")
        return out
    if isinstance(shown, list):
        if not isinstance(real, list):
            return [f"{where}: shown a list, got {json.dumps(real, ensure_ascii=False)[:200]}"]
        prefix = bool(shown) and shown[-1] == ELLIPSIS
        items = shown[:-1] if prefix else shown
        if (len(real) < len(items)) if prefix else (len(real) != len(items)):
            return [f"{where}: shown {len(items)} item(s){' or more' if prefix else ''}, got {len(real)}"]
        return [d for i, item in enumerate(items) for d in differences(item, real[i], f"{where}[{i}]")]
    if isinstance(shown, str) and ELLIPSIS in shown:
        pattern = ".*".join(re.escape(part) for part in shown.split(ELLIPSIS))
        if isinstance(real, str) and re.fullmatch(pattern, real, re.S):
            return []
    if shown == real and type(shown) is type(real):
        return []
    if isinstance(shown, float | int) and isinstance(real, float | int) and not isinstance(real, bool):
        if shown == real:
            return []
    return [
        f"{where}: shown {json.dumps(shown, ensure_ascii=False)}, got {json.dumps(real, ensure_ascii=False)[:200]}"
    ]


async def run_file(client: httpx.AsyncClient, root: Path, relative: str) -> list[Outcome]:
    """Every example of one file, in a fresh company; the outcomes in order."""
    runner = Runner(client)
    found = examples((root / relative).read_text(encoding="utf-8"), relative)
    if not found:
        return []
    await runner.sign_up_company()
    return [await runner.run(example) for example in found]
