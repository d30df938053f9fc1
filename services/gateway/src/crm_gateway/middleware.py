"""The edge of every request, as plain ASGI (no per-request task or body copy on the hot path):

- the client's address, resolved behind trusted proxies (`clientip.py`), set as the scope's `client` and on
  the request context (passed to services as `x-crm-client-ip`);
- a request id (the client's `X-Request-ID` when the kit's rule takes it, `crm_kit.context.REQUEST_ID`:
  at most `REQUEST_ID_MAX` characters; else a new one), bound to the log context and echoed in the response;
- bodies: more than `max_body_bytes` → 413 before reading it; a non-empty body that is not JSON → 415;
  upload routes (`uploads`: path patterns of POST routes taking multipart/form-data) have their own limit,
  `max_upload_bytes`, and take multipart bodies instead of JSON;
- NUL characters in the URL → 400 (no text column can hold them; see `runtime` for bodies);
- anything that escapes the app → a 500 problem, logged, never a stack trace to the client;
- a JSON access-log line per request (CRM_ACCESS_LOG=all), or only for failed and slow ones (the default).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from crm_kit import context

from crm_gateway import clientip
from crm_gateway.problems import ProblemError, internal_error, render

log = logging.getLogger("crm.gateway")
access = logging.getLogger("crm.gateway.access")

SLOW_SECONDS = 1.0
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
STATIC_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class EdgeMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: int,
        access_log: str = "errors",
        uploads: Sequence[re.Pattern[str]] = (),
        max_upload_bytes: int = 0,
        trusted_proxies: Sequence[clientip.Network] = (),
    ):
        self.app = app
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_body = max_body_bytes
        self.uploads = tuple(uploads)
        self.max_upload = max_upload_bytes
        self.log_all = access_log == "all"
        self.log_errors = access_log in ("all", "errors")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client, scheme = clientip.resolve(scope, self.trusted_proxies)
        scope = {**scope, "client": (client, (scope.get("client") or ("", 0))[1])}
        if scheme:
            scope["scheme"] = scheme
        headers: dict[bytes, bytes] = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = context.request_id_or_new(incoming)
        token = context.bind(
            context.RequestContext(request_id=request_id, extra={context.CLIENT_IP_METADATA: client})
        )
        started = time.perf_counter()
        status = 0
        rid = request_id.encode()

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = list(message.get("headers", ()))
                names = {k.lower() for k, _ in out}
                out.append((b"x-request-id", rid))
                out.extend(h for h in STATIC_HEADERS if h[0] not in names)
                message["headers"] = out
            await send(message)

        try:
            if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
                raise ProblemError(400, "nul_character", "the URL may not contain NUL (%00) characters")
            method = scope["method"]
            if method == "POST" and self.uploads and any(p.match(scope["path"]) for p in self.uploads):
                receive = self._check_upload(headers, receive)
            elif method in BODY_METHODS:
                receive = await self._check_body(scope, headers, receive)
            await self.app(scope, receive, send_with_headers)
        except ProblemError as exc:
            await render(exc, scope.get("path", ""))(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status == 0:
                await render(internal_error(), scope.get("path", ""))(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            if self.log_all or (
                self.log_errors and (status >= 400 or status == 0 or elapsed >= SLOW_SECONDS)
            ):
                access.info(
                    "%s %s %s",
                    scope.get("method"),
                    scope.get("path"),
                    status,
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            context.reset(token)

    def _check_upload(self, headers: dict[bytes, bytes], receive: Any) -> Any:
        """An upload streams through to its route: an announced size over the limit is refused at once, a
        chunked body as soon as it passes the limit."""
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise ProblemError(400, "bad_content_length", "Content-Length is not a number")
            if int(length) > self.max_upload:
                raise ProblemError(
                    413,
                    "body_too_large",
                    f"the upload is {int(length)} bytes; at most {self.max_upload} are accepted",
                )
            return receive
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_upload:
                raise ProblemError(413, "body_too_large", f"the upload exceeds {self.max_upload} bytes")
            return message

        return counted

    async def _check_body(self, scope: dict[str, Any], headers: dict[bytes, bytes], receive: Any) -> Any:
        length = headers.get(b"content-length")
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if length is not None:
            if not length.isdigit():
                raise ProblemError(400, "bad_content_length", "Content-Length is not a number")
            size = int(length)
            if size > self.max_body:
                raise ProblemError(
                    413,
                    "body_too_large",
                    f"the request body is {size} bytes; at most {self.max_body} are accepted",
                )
            if size and not _is_json(content_type):
                raise _not_json(content_type)
            return receive
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return receive
        # A chunked body has no announced length: read it here, up to the limit, and hand it on.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise ProblemError(413, "body_too_large", f"the request body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        if size and not _is_json(content_type):
            raise _not_json(content_type)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _not_json(content_type: str) -> ProblemError:
    return ProblemError(
        415,
        "unsupported_media_type",
        f"request bodies must be application/json, not {content_type or 'unspecified'}",
    )
