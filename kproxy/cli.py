"""The ``kproxy`` (and ``kamal-proxy``) command: a thin client of the control socket.

``run`` starts the proxy: in this process with ``--workers 1``, else as the supervisor of
worker processes (runtime/supervisor.py). Every other command is parsed here (so a typo fails
fast, even with no proxy running), sent as one line to the socket, and its answer printed as it
streams: progress lines to stdout, then exit 0 on ``OK`` or 1 on ``ERR`` (message on stderr).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import attrs
import trio

from kproxy.core import commands as cmd
from kproxy.core.command_parser import default_socket_path, parse_command
from kproxy.core.help import help_text
from kproxy.errors import KProxyError, UsageError
from kproxy.runtime.log import Logger
from kproxy.runtime.proxy import Proxy
from kproxy.runtime.supervisor import Supervisor


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_cli(sys.argv[1:] if argv is None else list(argv)))


def run_cli(argv: list[str]) -> int:
    env = dict(os.environ)
    try:
        socket_path, words = _take_socket_flag(argv, env)
        command = parse_command(words, env)
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if isinstance(command, cmd.Help):
        try:
            print(help_text(command))
        except UsageError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        return 0
    if isinstance(command, cmd.Run):
        return _run_proxy(command)
    return _send(socket_path, words)


def _take_socket_flag(argv: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    """``--socket`` is a client-side setting: take it out of the line sent to the proxy."""
    words: list[str] = []
    socket_path = ""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--socket":
            if i + 1 >= len(argv):
                raise UsageError("flag --socket needs a value")
            socket_path, i = argv[i + 1], i + 2
            continue
        if word.startswith("--socket="):
            socket_path = word.partition("=")[2]
        else:
            words.append(word)
        i += 1
    if words[:1] == ["run"] and socket_path:
        words.append(f"--socket={socket_path}")
    return socket_path or default_socket_path(env), words


def _run_proxy(command: cmd.Run) -> int:
    logger = Logger(debug_enabled=command.options.debug)
    options = command.options
    if options.workers == 0:  # one per core this process may run on (a cpuset limits them)
        options = attrs.evolve(options, workers=len(os.sched_getaffinity(0)) or 1)

    async def serve() -> str | None:
        """Run until SIGTERM/SIGINT; return why the proxy could not start, if it could not."""
        # One process, or a supervisor and its workers (runtime/supervisor.py).
        proxy = Proxy(options, logger) if options.workers == 1 else Supervisor(options, logger)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                # Caught here, unwrapped: past this nursery it would be an ExceptionGroup.
                try:
                    await nursery.start(proxy.serve)
                except KProxyError as exc:
                    return str(exc)
                except OSError as exc:
                    return f"cannot start the proxy: {exc}"
                await _next_signal(signals, logger)
                with trio.CancelScope() as grace:
                    # A second signal cuts the grace period short (an impatient Ctrl-C).
                    nursery.start_soon(_cancel_on_signal, signals, grace, logger)
                    await proxy.shutdown()
                nursery.cancel_scope.cancel()
        return None

    error = trio.run(serve)
    if error is not None:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


async def _next_signal(signals: AsyncIterator[int], logger: Logger) -> None:
    async for signum in signals:
        logger.info("Signal received", signal=signal.Signals(signum).name)
        return


async def _cancel_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, logger: Logger
) -> None:
    await _next_signal(signals, logger)
    scope.cancel()


def _send(socket_path: str, words: list[str]) -> int:
    """Send one command line; stream the answer; map OK/ERR to the exit status.

    Ctrl-C closes the socket, which is what cancels the command (a deploy before its
    cutover). The wait for the answer therefore runs under trio with SIGINT taken by a signal
    receiver: its wakeup fd wakes the wait even when the signal lands just before it blocks.
    A plain blocking ``recv`` misses that case: Python runs signal handlers between
    bytecodes, so a SIGINT arriving after the last check and before the ``recv`` system call
    leaves the client blocked until the proxy answers (for a deploy, up to its timeout).
    """
    try:
        return trio.run(_converse_until_interrupted, socket_path, shlex.join(words) + "\n")
    except KeyboardInterrupt:  # before the signal receiver was in place, or after it closed
        return _interrupted()


async def _converse_until_interrupted(socket_path: str, line: str) -> int:
    codes: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_first_signal, signals, nursery.cancel_scope)
            codes.append(await _converse(socket_path, line.encode()))
            nursery.cancel_scope.cancel()
    return codes[0] if codes else _interrupted()


async def _cancel_on_first_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def _interrupted() -> int:
    print("Error: interrupted; the proxy cancels the command", file=sys.stderr)
    return 130


async def _converse(socket_path: str, line: bytes) -> int:
    try:
        stream = await trio.open_unix_socket(socket_path)
    except OSError as exc:
        print(
            f"Error: cannot reach the proxy at {socket_path} ({exc.strerror or exc}); "
            "is 'kproxy run' running? (choose the socket with --socket or KPROXY_SOCKET)",
            file=sys.stderr,
        )
        return 1
    try:
        async with stream:
            await stream.send_all(line)
            await stream.send_eof()
            async for answer in _lines(stream):
                code = _show(answer.decode("utf-8", "replace"))
                if code is not None:
                    return code
    except trio.BrokenResourceError as exc:
        print(f"Error: lost the connection to the proxy ({exc.__cause__ or exc})", file=sys.stderr)
        return 1
    print("Error: the proxy closed the connection without an answer", file=sys.stderr)
    return 1


async def _lines(stream: trio.SocketStream) -> AsyncIterator[bytes]:
    """The lines of the answer, as they arrive; a last one may lack its newline."""
    pending = b""
    while chunk := await stream.receive_some():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line
    if pending:
        yield pending


def _show(line: str) -> int | None:
    """Print one answer line; the exit status once the answer is complete."""
    if line.startswith("  "):
        print(line[2:], flush=True)
    elif line == "OK" or line.startswith("OK "):
        if line[3:]:
            print(line[3:], flush=True)
        return 0
    elif line.startswith("ERR"):
        print(f"Error: {line[4:]}", file=sys.stderr)
        return 1
    return None
