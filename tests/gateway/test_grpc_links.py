"""The links between the gateway and the services, and between services (crm_kit.grpc_client/grpc_server):
keepalive that both sides agree on, deadlines passed on, the client's address passed on."""

from __future__ import annotations

import asyncio
import time

import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm.identity.v1 import identity_pb2_grpc
from crm_kit import context, grpc_client
from crm_kit.grpc_server import GrpcServer, Servicer

IDENTITY = pb.DESCRIPTOR.services_by_name["IdentityService"]
GET_JWKS = f"/{IDENTITY.full_name}/GetJwks"


def test_clients_never_ping_more_often_than_servers_accept():
    """Derived from the one declaration (crm_kit.grpc_client.KEEPALIVE), as the kit's channels and servers
    use it: a client's ping interval is at least the server's minimum, and pings on idle connections are
    allowed on both sides (otherwise the server answers GOAWAY too_many_pings)."""
    client = dict(grpc_client.channel_options())
    server = dict(GrpcServer([], verifier=None, host="127.0.0.1", port=0).options)
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.keepalive_permit_without_calls"] == server["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.http2.max_pings_without_data"] == 0 == client["grpc.http2.max_pings_without_data"]


class Recorder(identity_pb2_grpc.IdentityServiceServicer):
    """A service method that notes what reached it, and optionally calls the next service on."""

    def __init__(self, next_address: str | None = None):
        self.seen: list[tuple[float | None, str]] = []
        self.next = grpc_client.channel(next_address, [IDENTITY]) if next_address else None

    async def GetJwks(self, request, ctx):
        self.seen.append((ctx.time_remaining(), context.client_ip()))
        if self.next is not None:
            stub = identity_pb2_grpc.IdentityServiceStub(self.next)
            # Asks for 30 s: the kit's channel lowers it to what is left of the incoming call's deadline.
            await stub.GetJwks(request, timeout=30, metadata=grpc_client.outgoing_metadata())
        return pb.GetJwksResponse()


async def _serve(servicer: Recorder, keepalive: grpc_client.Keepalive = grpc_client.KEEPALIVE) -> GrpcServer:
    server = GrpcServer(
        [Servicer(identity_pb2_grpc.add_IdentityServiceServicer_to_server, servicer, IDENTITY.full_name)],
        verifier=None,
        public_methods={GET_JWKS},
        host="127.0.0.1",
        port=0,
        keepalive=keepalive,
    )
    await server.start()
    return server


async def test_a_service_passes_on_the_deadline_and_the_client_address():
    last = Recorder()
    last_server = await _serve(last)
    middle = Recorder(f"127.0.0.1:{last_server.port}")
    middle_server = await _serve(middle)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{middle_server.port}") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            await stub.GetJwks(
                pb.GetJwksRequest(), timeout=2, metadata=((context.CLIENT_IP_METADATA, "198.51.100.7"),)
            )
    finally:
        await middle.next.close()
        await middle_server.stop(0)
        await last_server.stop(0)
    (middle_left, middle_ip), (last_left, last_ip) = middle.seen[0], last.seen[0]
    assert middle_left is not None and middle_left <= 2
    # Not the 30 s the middle service asked for: what was left of the first call's 2 s (give or take the clock
    # granularity of the grpc-timeout header).
    assert last_left is not None and last_left <= middle_left + 0.05
    assert middle_ip == last_ip == "198.51.100.7"


async def _connection_survives_idle_pings(server_keepalive: grpc_client.Keepalive) -> bool:
    """Keeps a connection idle for a while with a client that pings every 100 ms: does it stay up?"""
    eager = grpc_client.Keepalive(time_ms=100, timeout_ms=1_000)
    server = await _serve(Recorder(), keepalive=server_keepalive)
    try:
        async with grpc_client.channel(f"127.0.0.1:{server.port}", [IDENTITY], keepalive=eager) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            await stub.GetJwks(pb.GetJwksRequest(), timeout=5)
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            deadline = time.monotonic() + 4.0  # gRPC closes after a few strikes (~3 s)
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 0.1)
                    return False  # the server closed it (GOAWAY too_many_pings)
                except TimeoutError:
                    pass
            return channel.get_state() == grpc.ChannelConnectivity.READY
    finally:
        await server.stop(0)


async def test_an_idle_connection_stays_up_when_both_sides_use_one_keepalive():
    assert await _connection_survives_idle_pings(grpc_client.Keepalive(time_ms=100, timeout_ms=1_000))
    # The same client against a server that allows pings only every 5 minutes (gRPC's default, what the
    # services had): the connection is closed. So the test above can fail.
    assert not await _connection_survives_idle_pings(grpc_client.Keepalive(time_ms=600_000))


async def test_the_gateway_sets_a_deadline_and_sends_the_resolved_client_address(test_infra):
    from tests.gateway.conftest import gateway_settings, running_gateway

    identity = Recorder()
    server = await _serve(identity)
    try:
        settings = gateway_settings(
            test_infra, f"127.0.0.1:{server.port}", trusted_proxies="10.0.0.0/8", grpc_timeout_seconds=7
        )
        async with running_gateway(settings, client=("10.0.0.5", 1)) as api:
            answer = await api.get(
                "/.well-known/jwks.json", headers={"X-Forwarded-For": "192.0.2.1, 198.51.100.30"}
            )
            assert answer.status_code == 200, answer.text
    finally:
        await server.stop(0)
    left, client_ip = identity.seen[-1]
    assert left is not None and 0 < left <= 7
    assert client_ip == "198.51.100.30"
