"""Sockets inside another network namespace.

A socket belongs to the namespace it was made in, whatever thread uses it later. So a thread of its own enters
the namespace (setns, which Python 3.11's os module lacks), makes and binds the socket, and leaves; the thread
then ends, so no thread of a pool is ever left in a foreign namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def enter_namespace(namespace: str) -> None:
    """Move the calling thread into the network namespace at path `namespace`, for good."""
    target = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
    finally:
        os.close(target)


def _bound_socket_in(namespace: str, kind: socket.SocketKind, address: tuple[str, int]) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                sock = socket.socket(socket.AF_INET, kind)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(address)
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    raise
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
    return sock


def settle_socket(future: asyncio.Future[socket.socket], sock: socket.socket | None, error: Exception | None) -> None:
    """Hand a socket made on another thread to its waiter (on the loop's thread); closed if nobody waits."""
    if future.cancelled():
        if sock is not None:
            sock.close()
    elif sock is not None:
        future.set_result(sock)
    else:
        future.set_exception(error or OSError("no socket"))


async def bound_socket_in(namespace: str, kind: socket.SocketKind, address: tuple[str, int]) -> socket.socket:
    """A socket bound to `address` in the namespace at path `namespace` (/run/netns/NAME, /proc/PID/ns/net)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def run() -> None:
        try:
            result = _bound_socket_in(namespace, kind, address)
        except Exception as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle_socket, done, None, exc)
        else:
            loop.call_soon_threadsafe(settle_socket, done, result, None)

    threading.Thread(target=run, name="netns-socket", daemon=True).start()
    return await done
