#!/usr/bin/env python3
"""A TCP relay that counts the bytes clients send to a server.

    tcp-count.py LISTEN_PORT TARGET_PORT COUNT_FILE

Listens on 127.0.0.1:LISTEN_PORT and relays every connection to
127.0.0.1:TARGET_PORT. After each connection opens or closes it rewrites
COUNT_FILE with one line: "<bytes client->server> <bytes server->client>
<open connections>", totals since start. bench/run puts it between `tug
push` and the server to see how many bytes a push really sends, whatever
the CLI reports. (The server's /proc/<pid>/io cannot tell: rchar does not
count recv(2) on sockets, which is what Rust's standard library uses.)
"""

import asyncio
import os
import sys

CHUNK = 1 << 18


class Totals:
    def __init__(self, path):
        self.path = path
        self.up = 0
        self.down = 0
        self.open = 0

    def write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{self.up} {self.down} {self.open}\n")
        os.replace(tmp, self.path)


async def pipe(reader, writer, totals, direction):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            if direction == "up":
                totals.up += len(data)
            else:
                totals.down += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def relay(client_reader, client_writer, target_port, totals):
    totals.open += 1
    totals.write()
    server_writer = None
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            pipe(client_reader, server_writer, totals, "up"),
            pipe(server_reader, client_writer, totals, "down"),
        )
    except ConnectionError:
        pass
    finally:
        for w in (client_writer, server_writer):
            if w is not None:
                w.close()
        totals.open -= 1
        totals.write()


async def main():
    listen_port, target_port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    totals = Totals(path)
    totals.write()
    server = await asyncio.start_server(
        lambda r, w: relay(r, w, target_port, totals), "127.0.0.1", listen_port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
