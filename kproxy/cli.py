"""The ``kproxy`` (and ``kamal-proxy``) command: a thin client of the control socket.

``run`` starts the proxy: in this process with ``--workers 1``, else as the supervisor of
worker processes (runtime/supervisor.py). Every other command is parsed here (so a typo fails
fast, even with no proxy running), sent as one line to the socket, and its answer printed as it
streams: progress lines to stdout, then exit 0 on ``OK`` or 1 on ``ERR`` (message on stderr).
``version`` prints this program's version, then the running proxy's if one answers.

A client command starts in a few tens of milliseconds: the proxy's modules (trio, the
runtime) are imported by ``run`` alone, and the conversation is a blocking socket.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from kproxy._version import version_line
from kproxy.core import commands as cmd
from kproxy.core.command_parser import default_socket_path, parse_command
from kproxy.core.help import help_text
from kproxy.errors import UsageError

if TYPE_CHECKING:
    import trio

    from kproxy.runtime.log import Logger


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run_cli(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`kproxy help | head`): stop quietly
        # Python flushes stdout once more at exit; point it at /dev/null so that is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


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
    if isinstance(command, cmd.Version):
        return _version(socket_path)
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
    import attrs  # the proxy's modules: only ``run`` needs them
    import trio

    from kproxy.errors import KProxyError
    from kproxy.runtime.log import Logger
    from kproxy.runtime.proxy import Proxy
    from kproxy.runtime.supervisor import Supervisor

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
    """Send one command line; stream the answer; map OK/ERR to the exit status."""
    try:
        return _converse(socket_path, shlex.join(words) + "\n", _show)
    except KeyboardInterrupt:  # before the SIGINT handler was in place, or after it left
        return _interrupted()


def _version(socket_path: str) -> int:
    """This program's version; then the proxy's, when one answers (none: still exit 0)."""
    print(version_line(), flush=True)

    def show(line: str) -> int | None:
        if line.startswith("  "):
            print(f"proxy: {line[2:]}", flush=True)
        return 0 if line == "OK" or line.startswith("OK ") else None

    _converse(socket_path, "version\n", show, unreachable="no proxy answers at {path}: {why}")
    return 0


def _converse(
    socket_path: str,
    line: str,
    show: Callable[[str], int | None],
    unreachable: str = (
        "Error: cannot reach the proxy at {path} ({why}); is 'kproxy run' running? "
        "(choose the socket with --socket or KPROXY_SOCKET)"
    ),
) -> int:
    """Send ``line``, pass each answer line to ``show`` until it returns the exit status.

    Ctrl-C closes the socket, which is what cancels the command (a deploy before its
    cutover). The wait polls the socket and a signal wakeup fd together: a SIGINT that lands
    just before the wait still wakes it (a plain blocking ``recv`` would sleep through it,
    since Python runs signal handlers between bytecodes, until the proxy answers).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        sock.close()
        print(unreachable.format(path=socket_path, why=exc.strerror or exc), file=sys.stderr)
        return 1
    with sock, _SigintWakeup() as wakeup:
        try:
            sock.sendall(line.encode())
            sock.shutdown(socket.SHUT_WR)
            for answer in _lines(sock, wakeup):
                code = show(answer.decode("utf-8", "replace"))
                if code is not None:
                    return code
        except _Interrupted:
            return _interrupted()
        except OSError as exc:
            print(f"Error: lost the connection to the proxy ({exc})", file=sys.stderr)
            return 1
    print("Error: the proxy closed the connection without an answer", file=sys.stderr)
    return 1


class _Interrupted(Exception):
    pass


class _SigintWakeup:
    """While entered, SIGINT sets ``interrupted`` and writes to ``fd``, which the wait polls
    (``signal.set_wakeup_fd``)."""

    def __enter__(self) -> _SigintWakeup:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.interrupted = False
        self._old_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        self.interrupted = True

    def __exit__(self, *_exc: object) -> None:
        signal.signal(signal.SIGINT, self._old_handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self.fd)
        os.close(self._write_fd)


def _lines(sock: socket.socket, wakeup: _SigintWakeup) -> Iterator[bytes]:
    """The lines of the answer, as they arrive; a last one may lack its newline."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wakeup.fd, select.POLLIN)
    pending = b""
    while True:
        poller.poll()
        if wakeup.interrupted:
            raise _Interrupted
        chunk = sock.recv(65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _interrupted() -> int:
    print("Error: interrupted; the proxy cancels the command", file=sys.stderr)
    return 130


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
