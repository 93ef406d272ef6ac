"""Several processes, one command: :func:`serve` runs an application on every core.

A Tornado process uses one core. :func:`serve` is the usual Tornado recipe
(``tornado.netutil.bind_sockets``, ``tornado.process.fork_processes``, one
``HTTPServer`` per child), plus what a deploy needs:

* every worker shuts down gracefully on SIGTERM/SIGINT
  (:mod:`~tornado_jsonservlet.shutdown`) and exits 0;
* the parent, on SIGTERM/SIGINT, closes its own copy of the listening sockets,
  forwards the signal to the workers, waits for them (no restarts from then on),
  and exits 0 when they all did. Docker and Kubernetes signal only the first
  process; systemd signals all of them, which is harmless (a worker ignores a
  second signal). Without the parent's close, connections arriving while the
  workers drain would wait in the parent's backlog and be reset when it exits;
  with it, they are refused at once, which a proxy can retry elsewhere.

Sockets
-------
By default the parent binds the sockets and the workers inherit them; the kernel
hands each new connection to whichever worker accepts first. With
``reuse_port=True`` each worker binds its own socket with ``SO_REUSEPORT`` (Linux,
BSD) and the kernel spreads connections evenly by hash, which balances better
under load. The price: connections queued on a worker's socket when it stops
are reset, where the shared socket would hand them to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional

import tornado.log
import tornado.netutil
import tornado.options
import tornado.process
import tornado.web
from tornado.log import gen_log

from tornado_jsonservlet.production.shutdown import (
    DEFAULT_ABANDON_AFTER,
    DEFAULT_GRACE,
    DrainingHTTPServer,
    GracefulShutdown,
)

__all__ = ["default_logging", "serve"]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PID = struct.Struct("=i")
#: Seconds the parent waits beyond the workers' own shutdown bound before SIGKILL.
_PARENT_MARGIN = 5.0


def serve(
    make_app: Callable[[], tornado.web.Application],
    port: int,
    address: str = "127.0.0.1",
    *,
    processes: int = 1,
    reuse_port: bool = False,
    shutdown_grace: float = DEFAULT_GRACE,
    abandon_after: float = DEFAULT_ABANDON_AFTER,
    max_restarts: Optional[int] = None,
    **server_options: Any,
) -> None:
    """Serve ``make_app()`` on ``address:port`` in ``processes`` processes until signalled.

    :param make_app: called once in each worker, after the fork, so that each
        process builds its own connections, pools and caches (nothing created
        before a fork survives it in a usable state).
    :param processes: number of workers; ``0`` means one per CPU; ``1`` serves in
        this process without forking.
    :param reuse_port: each worker binds its own ``SO_REUSEPORT`` socket (see the
        module documentation).
    :param shutdown_grace: seconds in-flight requests get after SIGTERM/SIGINT.
    :param abandon_after: further seconds for requests that could not be cancelled.
    :param max_restarts: passed to ``fork_processes`` (a crashed worker is restarted
        up to this many times in all; Tornado's default is 100).
    :param server_options: ``HTTPServer`` options, e.g. ``xheaders=True`` behind a
        proxy, ``max_body_size``, ``idle_connection_timeout``.

    Returns in each process that served, once its shutdown is complete, unless
    requests had to be abandoned: the process then exits at once (status 0, no
    ``atexit`` handlers), because leaving normally would cancel them and make
    Tornado log errors for them. In multi-process mode the parent never returns:
    it exits when the workers did.

    **Logging.** When the application has not configured logging (the root logger
    has no handler), ``serve()`` turns on Tornado's pretty logging as
    ``tornado.options.parse_command_line()`` would, at the level of ``--logging``
    (``info`` unless parsed otherwise; ``--logging=none`` keeps it off), so that
    the line saying where each process listens, the access log and errors are
    seen. Logging that is configured (``logging.basicConfig``, ``dictConfig``, or
    ``parse_command_line``) is left untouched.

    :raises ValueError: for a bad argument, before anything is bound or forked.

    .. versionadded:: 0.1
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
        raise ValueError(f"processes must be an integer >= 0, not {processes!r}")
    GracefulShutdown([], grace=shutdown_grace, abandon_after=abandon_after)  # validates
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port needs SO_REUSEPORT, which this platform lacks")
    if reuse_port and port == 0 and processes != 1:
        raise ValueError("reuse_port needs a fixed port: with port 0 each worker would get its own")
    default_logging()

    def run(sockets: Sequence[socket.socket], pending: list[int]) -> None:
        asyncio.run(
            _serve_in_this_process(
                sockets, pending, make_app, shutdown_grace, abandon_after, server_options
            )
        )

    if processes == 1:
        run(tornado.netutil.bind_sockets(port, address, reuse_port=reuse_port), [])
        return
    sockets = [] if reuse_port else tornado.netutil.bind_sockets(port, address)
    supervisor = _Supervisor(sockets, shutdown_grace + abandon_after + _PARENT_MARGIN)
    try:
        supervisor.install()
        tornado.process.fork_processes(processes, max_restarts)
    except _StopRequested:
        supervisor.stop_workers()
    supervisor.in_worker()
    if reuse_port:
        sockets = tornado.netutil.bind_sockets(port, address, reuse_port=True)
    run(sockets, supervisor.pending)


async def _serve_in_this_process(
    sockets: Sequence[socket.socket],
    pending: list[int],
    make_app: Callable[[], tornado.web.Application],
    shutdown_grace: float,
    abandon_after: float,
    server_options: dict[str, Any],
) -> None:
    app = make_app()
    server = DrainingHTTPServer(app, **server_options)
    server.add_sockets(sockets)
    shutdown = GracefulShutdown([server], grace=shutdown_grace, abandon_after=abandon_after)
    shutdown.install_signal_handlers(_STOP_SIGNALS)
    names = ", ".join(f"http://{_address(sock)}/" for sock in sockets)
    worker = tornado.process.task_id()
    gen_log.info(
        "%s (pid %d) serving on %s",
        "process" if worker is None else f"worker {worker}",
        os.getpid(),
        names,
    )
    if pending:  # a signal arrived before the loop could handle it
        shutdown.begin()
    report = await shutdown.wait()
    if report.abandoned:
        # Leaving through asyncio.run would cancel the abandoned requests' tasks,
        # and Tornado answers that with a 500 logged at ERROR (6.6) or an error
        # from the loop (6.4/6.5). They were given their time; end the process here.
        _exit_now(0)


def default_logging() -> bool:
    """Turn on Tornado's pretty logging unless the application configured logging.

    Without a handler on the root logger, Python prints only WARNING and above,
    unformatted: a server's "serving on" line and its 2xx access lines vanish.
    This does what ``tornado.options.parse_command_line()`` does, with the options'
    ``--logging`` level (``info`` by default; ``none`` turns it off), and only when
    the root logger has no handler, so an application's own configuration always
    wins. Returns whether it configured anything.

    .. versionadded:: 0.1
    """
    root = logging.getLogger()
    if root.handlers:
        return False
    tornado.log.enable_pretty_logging(tornado.options.options)
    return bool(root.handlers)


def _exit_now(status: int) -> NoReturn:
    logging.shutdown()  # flush every handler first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is still one of our children (a reported worker may have died
    and been reaped by ``fork_processes``, and its pid reused). Linux answers
    through ``/proc``; elsewhere the pid is trusted."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except FileNotFoundError:  # no such process, or no /proc at all
        return not os.path.isdir("/proc/self")
    except OSError:
        return True
    return len(fields) > 1 and int(fields[1]) == os.getpid()


class _StopRequested(BaseException):
    """Raised by the parent's signal handler to leave ``fork_processes``' wait loop.

    A ``BaseException`` so that no ``except Exception`` on the way swallows it.
    """


class _Supervisor:
    """The parent's side: learn the workers' pids, forward a stop signal, reap them.

    ``fork_processes`` keeps its children to itself, so each worker reports its
    pid through a pipe. The parent's signal handler raises :class:`_StopRequested`,
    which ends ``fork_processes``' wait loop: a worker that exits during the
    shutdown must not be restarted.
    """

    def __init__(self, sockets: Sequence[socket.socket], timeout: float) -> None:
        self.sockets = list(sockets)
        self.timeout = timeout
        self.parent_pid = os.getpid()
        self.pending: list[int] = []  # signals a worker got before its loop ran
        self.signum: Optional[int] = None
        self.workers: set[int] = set()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)

    def install(self) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if os.getpid() != self.parent_pid:
            # A worker, between its fork and its event loop: remember the signal.
            self.pending.append(signum)
            return
        if self.signum is not None:
            return  # already stopping
        self.signum = signum
        raise _StopRequested

    # -- in a worker -------------------------------------------------------------

    def in_worker(self) -> None:
        """Report this worker's pid; keep signals for the event loop to handle."""
        os.close(self._read_fd)
        os.write(self._write_fd, _PID.pack(os.getpid()))
        os.close(self._write_fd)

    # -- in the parent -----------------------------------------------------------

    def stop_workers(self) -> NoReturn:
        """Forward the stop signal, reap every worker, exit 0 if they all exited 0."""
        for sock in self.sockets:
            sock.close()  # new connections are refused, not parked in our backlog
        signum = self.signum or signal.SIGTERM
        gen_log.info(
            "Received %s: stopping %d worker(s)", signal.Signals(signum).name, len(self._read())
        )
        statuses: dict[int, int] = {}
        signalled: set[int] = set()
        deadline = time.monotonic() + self.timeout
        while True:
            for pid in self._read() - signalled:
                signalled.add(pid)
                if _is_child(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # no child left
            if pid:
                statuses[pid] = status
                continue
            if time.monotonic() >= deadline:
                for pid in {p for p in self.workers - set(statuses) if _is_child(p)}:
                    gen_log.warning("Worker (pid %d) still running; killing it", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")  # reap the killed ones on the next turns
            time.sleep(0.02)
        failed = {pid: status for pid, status in statuses.items() if status != 0}
        for pid, status in failed.items():
            gen_log.warning("Worker (pid %d) ended with wait status %d", pid, status)
        gen_log.info("All workers stopped")
        sys.exit(1 if failed else 0)

    def _read(self) -> set[int]:
        """Every worker pid reported so far."""
        while True:
            try:
                data = os.read(self._read_fd, _PID.size * 64)
            except BlockingIOError:
                break
            if not data:
                break
            for offset in range(0, len(data) - len(data) % _PID.size, _PID.size):
                self.workers.add(_PID.unpack_from(data, offset)[0])
        return self.workers
