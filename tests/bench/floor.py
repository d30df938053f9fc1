"""The floor of the gateway figure: what one HTTP request costs when it crosses one gRPC hop and nothing else.

A bare ASGI app (no framework, no auth, no JSON conversion) that forwards every request as one unary gRPC call
to a bare gRPC server answering with fixed bytes, both served like the hello-world (same uvicorn settings).
No gateway built from uvicorn and grpcio can beat it, so its req/s against the hello-world's is the best ratio
the figure (a) could reach on this machine: it tells a slow gateway from a target this machine cannot meet.

    python -m tests.bench.floor grpc <port>          # the bare gRPC server
    FLOOR_GRPC_TARGET=127.0.0.1:<port> uvicorn tests.bench.floor:app ...
"""

from __future__ import annotations

import asyncio
import os
import sys

import grpc

BODY = b'{"user":{"id":"0192","name":"floor"}}'
_channel: grpc.aio.Channel | None = None
_call = None


def _rpc():  # type: ignore[no-untyped-def]
    global _channel, _call
    if _call is None:
        _channel = grpc.aio.insecure_channel(os.environ["FLOOR_GRPC_TARGET"])
        _call = _channel.unary_unary("/floor.v1.Floor/Get")
    return _call


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = await _rpc()(b"")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_grpc(port: int) -> None:
    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return BODY

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "floor.v1.Floor", {"Get": grpc.unary_unary_rpc_method_handler(get)}
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__" and sys.argv[1:2] == ["grpc"]:
    asyncio.run(serve_grpc(int(sys.argv[2])))
