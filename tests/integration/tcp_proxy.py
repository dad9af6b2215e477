"""A TCP proxy on loopback for tests: a server reached through it can be slowed down (its replies
paced) or be absent for a while (the proxy listens only while its block runs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

CHUNK_BYTES = 64 * 1024


@asynccontextmanager
async def tcp_proxy(
    upstream_host: str, upstream_port: int, *, port: int = 0, reply_bytes_per_second: float | None = None
) -> AsyncIterator[int]:
    """Listens on ``port`` of 127.0.0.1 (0: any free one, yielded) and forwards each connection to the
    upstream server, passing its replies at ``reply_bytes_per_second`` when set. Every connection is
    closed at the end of the block."""
    links: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, paced: bool) -> None:
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                writer.write(chunk)
                await writer.drain()
                if paced and reply_bytes_per_second:
                    await asyncio.sleep(len(chunk) / reply_bytes_per_second)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def link(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            client_writer.close()
            raise
        await asyncio.gather(
            pipe(client_reader, server_writer, paced=False), pipe(server_reader, client_writer, paced=True)
        )

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(link(reader, writer))
        links.add(task)
        task.add_done_callback(links.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        for task in list(links):
            task.cancel()
        await asyncio.gather(*links, return_exceptions=True)
