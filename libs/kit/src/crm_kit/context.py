"""Who is calling, for which tenant, within which request: set once per call by the kit, read anywhere.

The tenant always comes from the verified credential, never from the request body or a header a client sets.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field

from crm.common.v1 import event_pb2

from crm_kit.ids import new_id

# A request id a client may choose (the gateway's X-Request-ID, a service's `x-request-id` metadata): declared
# once here. The gateway and the services accept one that matches and make a fresh one otherwise; events carry
# it; the audit trail stores it. Every column that stores a request id takes REQUEST_ID_MAX characters.
REQUEST_ID_MAX = 128
REQUEST_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{REQUEST_ID_MAX}}}\Z")
# A trace id as events and logs carry it: 32 hex digits (W3C trace context).
TRACE_ID_LENGTH = 32


def request_id_or_new(value: str) -> str:
    """`value` when it is an acceptable request id, else a fresh one."""
    return value if REQUEST_ID.match(value) else new_id()


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller: a signed-in user, a partner's API key, or the system itself."""

    tenant_id: str
    actor_id: str
    actor_type: int = event_pb2.ACTOR_TYPE_USER
    name: str = ""
    role_ids: tuple[str, ...] = ()
    department_id: str = ""
    api_key_id: str = ""

    @property
    def is_api_key(self) -> bool:
        return self.actor_type == event_pb2.ACTOR_TYPE_API_KEY

    def actor_message(self) -> event_pb2.Actor:
        return event_pb2.Actor(type=self.actor_type, id=self.actor_id, name=self.name)


SYSTEM = Principal(tenant_id="", actor_id="system", actor_type=event_pb2.ACTOR_TYPE_SYSTEM, name="system")


@dataclass(slots=True)
class RequestContext:
    principal: Principal | None = None
    request_id: str = ""
    trace_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# gRPC metadata carrying the caller's network address as the gateway resolved it (behind trusted proxies);
# a service reads it with `client_ip()`, and passes it on in the calls it makes for the request.
CLIENT_IP_METADATA = "x-crm-client-ip"

_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("crm_request_context")


def current() -> RequestContext:
    try:
        return _current.get()
    except LookupError:
        ctx = RequestContext()
        _current.set(ctx)
        return ctx


def bind(ctx: RequestContext) -> contextvars.Token[RequestContext]:
    return _current.set(ctx)


def reset(token: contextvars.Token[RequestContext]) -> None:
    _current.reset(token)


def caller() -> Principal:
    """The current call's principal; a call without one is unauthenticated (401)."""
    from crm_kit.errors import Unauthenticated

    principal = current().principal
    if principal is None:
        raise Unauthenticated("a credential is required", reason="missing_credential")
    return principal


def client_ip() -> str:
    """The address of the client the current request came from, as the gateway resolved it ("" when the call
    did not come through the gateway)."""
    return current().extra.get(CLIENT_IP_METADATA, "")
