"""The PoP server's probe responder, bound to the anycast addresses.

UDP (default port 7): a datagram ``{"seq": N, ...}`` is answered with ``{"pop", "server", "seq"}``.
HTTP (port 80): ``GET /`` answers the same JSON and an ``X-Anylab-Server: pop/server`` header.
Health (``127.0.0.1:--health-port``, 8080): ``GET /healthz`` answers ``ok`` — for the health agent.
The edge worker of a later issue replaces the HTTP part.
Run as ``python -m pop_agent.responder --pop P --server S --address A [--address B]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import cast


class Echo(asyncio.DatagramProtocol):
    def __init__(self, pop: str, server: str) -> None:
        self.pop, self.server = pop, server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            seq = json.loads(data).get("seq")
        except (ValueError, AttributeError):
            return  # not a probe: no answer
        assert self.transport is not None
        self.transport.sendto(json.dumps({"pop": self.pop, "server": self.server, "seq": seq}).encode(), addr)


def http_handler(pop: str, server: str) -> object:
    body = json.dumps({"pop": pop, "server": server, "seq": None}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            target = request_line.split(b" ")[:2]
            ok = target in ([b"GET", b"/"], [b"GET", b"/healthz"])
            status = b"200 OK" if ok else b"404 Not Found"
            payload = (b"ok\n" if target[1:] == [b"/healthz"] else body) if ok else \
                b'{"error": "only GET / and GET /healthz are served"}'
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         + f"X-Anylab-Server: {pop}/{server}\r\nContent-Length: {len(payload)}\r\n".encode()
                         + b"Connection: close\r\n\r\n" + payload)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


async def serve(pop: str, server: str, addresses: list[str], udp_port: int, http_port: int,
                health_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closers: list[asyncio.BaseTransport | asyncio.Server] = []
    for addr in addresses:
        transport, _ = await loop.create_datagram_endpoint(lambda: Echo(pop, server), local_addr=(addr, udp_port))
        closers.append(transport)
        srv = await asyncio.start_server(http_handler(pop, server), addr, http_port)  # type: ignore[arg-type]
        closers.append(srv)
    health = await asyncio.start_server(http_handler(pop, server), "127.0.0.1", health_port)  # type: ignore[arg-type]
    closers.append(health)
    await stop.wait()
    for c in closers:
        c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pop", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--address", action="append", required=True)
    parser.add_argument("--udp-port", type=int, default=7)
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--health-port", type=int, default=8080)
    args = parser.parse_args()
    asyncio.run(serve(args.pop, args.server, args.address, args.udp_port, args.http_port, args.health_port))


if __name__ == "__main__":
    main()
