"""Relay TCP connections between this machine's loopback and the loopback of a test network
namespace, so that a node under test can run in a namespace with no way out while kubectl,
the Python client and a local registry stay on the machine's loopback.

Usage: relay.py NETNS_PATH; then commands on stdin, one per line, each answered "ok" or an
error on stdout:
  in PORT   listen on the machine's 127.0.0.1:PORT, connect to 127.0.0.1:PORT in the namespace
  out PORT  listen on 127.0.0.1:PORT in the namespace, connect to the machine's 127.0.0.1:PORT
Only loopback addresses are used on either side.
"""

import asyncio
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


HOST = os.open("/proc/self/ns/net", os.O_RDONLY)
NETNS = os.open(sys.argv[1], os.O_RDONLY)


def socket_in(ns):
    """A TCP socket made in the namespace `ns` (it stays there whichever namespace uses it)."""
    setns(ns)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        setns(HOST)
    s.setblocking(False)
    return s


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def bridge(conn, ns, port):
    loop = asyncio.get_running_loop()
    out = socket_in(ns)
    try:
        await loop.sock_connect(out, ("127.0.0.1", port))
    except OSError:
        conn.close()
        out.close()
        return
    r1, w1 = await asyncio.open_connection(sock=conn)
    r2, w2 = await asyncio.open_connection(sock=out)
    await asyncio.gather(pipe(r1, w2), pipe(r2, w1))
    w1.close()
    w2.close()


# asyncio holds tasks weakly: a connection's task must be kept here, or it may be collected
# (and its connection dropped) mid-flight.
LIVE = set()


def keep(coro):
    task = asyncio.create_task(coro)
    LIVE.add(task)
    task.add_done_callback(LIVE.discard)
    return task


async def serve(listener, ns, port):
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        keep(bridge(conn, ns, port))


def listener_in(ns, port):
    s = socket_in(ns)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(512)
    return s


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            direction, port = line.decode().split()
            port = int(port)
            if direction == "in":
                keep(serve(listener_in(HOST, port), NETNS, port))
            elif direction == "out":
                keep(serve(listener_in(NETNS, port), HOST, port))
            else:
                raise ValueError(f"unknown direction {direction}")
            print("ok", flush=True)
        except Exception as e:  # report and keep serving
            print(f"error: {e}", flush=True)


asyncio.run(main())
