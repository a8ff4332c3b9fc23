"""The control socket: AF_UNIX, mode 0600, the line protocol of protocol.md.

Per connection, a reader feeds ``ControlConnection`` and queues commands; one executor answers
them in order. After the client half-closes, the queued commands still run and their answers
are written, then the connection closes. If the client goes away completely (its socket hangs
up, or a write fails), the running command is cancelled. When the proxy shuts down, the
command running and those queued are cancelled and each gets ``ERR shutting down``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from kproxy.core.control import (
    NEED_DATA,
    BadLine,
    CommandLine,
    ControlConnection,
    EndOfInput,
    format_err,
    format_line,
    format_ok,
)
from kproxy.errors import KProxyError

Execute = Callable[[tuple[str, ...], Callable[[str], Awaitable[None]]], Awaitable[str]]

QUEUED_COMMANDS: Final = 16  # commands read ahead of the one running
HANGUP_POLL_INTERVAL: Final = 0.2  # seconds between checks for a vanished client
SHUTDOWN_ANSWER_TIMEOUT: Final = 1.0  # seconds to write the ERR lines of a shutdown


async def open_control_listener(path: str) -> trio.SocketListener:
    """Bind ``path`` (replacing a stale socket file, refusing a live one) with mode 0600."""
    await _remove_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        old_umask = os.umask(0o177)  # the file is born 0600: no window where others may connect
        try:
            await sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise KProxyError(f"{path} exists and is not a socket; remove it or choose --socket")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a proxy that was killed
        return
    finally:
        probe.close()
    raise KProxyError(f"another kproxy is already listening on {path}")


def _hung_up(sock: trio.socket.SocketType) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # POLLHUP and POLLERR are always reported
    return any(mask & (select.POLLHUP | select.POLLERR) for _, mask in poller.poll(0))


async def handle_control_connection(stream: trio.SocketStream, execute: Execute) -> None:
    protocol = ControlConnection()
    send, receive = trio.open_memory_channel[CommandLine | BadLine](QUEUED_COMMANDS)
    unanswered = 0  # lines read whose final line is not written yet
    ended_here = False  # the connection's own end (a client gone, all answered), not shutdown

    def end() -> None:
        nonlocal ended_here
        ended_here = True
        nursery.cancel_scope.cancel()

    async def read_commands(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        async with send:
            while True:
                try:
                    data = await stream.receive_some(64 * 1024)
                except (trio.BrokenResourceError, OSError):
                    end()
                    return
                protocol.receive_data(data)
                while True:
                    event = protocol.next_event()
                    if event is NEED_DATA:
                        break
                    if isinstance(event, EndOfInput):
                        nursery.start_soon(watch_hangup)
                        return
                    nonlocal unanswered
                    unanswered += 1
                    await send.send(event)

    async def watch_hangup() -> None:
        while not _hung_up(stream.socket):  # noqa: ASYNC110  # no event exists for a hang-up
            await trio.sleep(HANGUP_POLL_INTERVAL)
        end()

    async def answer(data: bytes) -> None:
        nonlocal unanswered
        await write(data)
        unanswered -= 1

    async def write(data: bytes) -> None:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            end()  # the client is gone: stop the command it asked for
            await trio.lowlevel.checkpoint()

    async def progress(line: str) -> None:
        await write(format_line(line))

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(read_commands)
            async with receive:
                async for event in receive:
                    if isinstance(event, BadLine):
                        await answer(format_err(event.message))
                        continue
                    try:
                        text = await execute(event.words, progress)
                    except KProxyError as exc:
                        await answer(format_err(str(exc)))
                    except Exception as exc:
                        # execute() reports bugs as CommandError; this backstop keeps a bug in
                        # it from escaping into the listener's nursery and stopping the proxy.
                        await answer(format_err(f"internal error: {exc!r}"))
                    else:
                        await answer(format_ok(text))
            end()
    finally:
        if unanswered and not ended_here:
            # Cancelled from outside: the proxy is shutting down. Each line still gets its
            # one final line (the client is still there: it did not cancel this).
            with trio.move_on_after(SHUTDOWN_ANSWER_TIMEOUT, shield=True):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(format_err("shutting down") * unanswered)
        with contextlib.suppress(OSError):
            stream.socket.shutdown(socket.SHUT_RDWR)
        await trio.aclose_forcefully(stream)


def unlink_socket(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
