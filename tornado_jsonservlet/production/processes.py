"""Several processes, one command: :func:`serve` runs an application on every core.

A Tornado process uses one core. :func:`serve` binds the sockets, forks the
workers, runs one :class:`~tornado_jsonservlet.shutdown.DrainingHTTPServer` in
each, and supervises them, with what a deploy needs:

* every worker shuts down gracefully on SIGTERM/SIGINT
  (:mod:`~tornado_jsonservlet.shutdown`) and exits 0, however many copies of the
  signal reach it: from then on it ignores further stop signals, so a duplicate
  (systemd signals the whole group *and* the parent forwards its own) cannot kill
  a worker that has drained and is on its way out;
* the parent, on SIGTERM/SIGINT, closes its own copy of the listening sockets,
  forwards the signal to the workers, waits for them (no restarts from then on),
  and exits 0 when they all did. Docker and Kubernetes signal only the first
  process; systemd signals all of them; both give the same result. Without the
  parent's close, connections arriving while the workers drain would wait in the
  parent's backlog and be reset when it exits; with it, they are refused at once,
  which a proxy can retry elsewhere;
* **no orphans**: whatever ends the parent (a signal, too many restarts, a worker
  that cannot start, an exception), it stops and reaps every worker first (SIGTERM,
  then SIGKILL after the shutdown bound). On Linux a worker also gets SIGTERM if
  the parent dies without that chance (``PR_SET_PDEATHSIG``);
* **restarts back off**: a worker that crashes is restarted after 0.1 s, then
  0.2, 0.4, ... up to 30 s while it keeps crashing within 10 s of its start; each
  crash is logged at WARNING with the delay;
* **a worker that cannot start** (``make_app`` or a startup callback raises)
  is reported once, at ERROR, with its exception: when no worker of the group has
  started yet, the parent stops the others and exits 1 (a configuration mistake;
  restarting would repeat it); later it is retried with the same back-off.

Lifecycle hooks
---------------
``make_app`` may be a coroutine function (an async application factory), so an
application can open its database pool on the worker's own event loop, after
the fork. ``on_startup`` callbacks run after it and before the worker accepts;
``on_shutdown`` callbacks run, in reverse order, once the worker has drained.
Each takes the application and may be sync or async.

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
import ctypes
import inspect
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, NoReturn, Optional, Union

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

__all__ = ["AppFactory", "LifecycleHook", "default_logging", "serve"]

#: ``make_app``: returns the application, or an awaitable of it.
AppFactory = Callable[[], Union[tornado.web.Application, Awaitable[tornado.web.Application]]]
#: A startup or shutdown callback: called with the application; may be async.
LifecycleHook = Callable[[tornado.web.Application], Optional[Awaitable[Any]]]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Worker -> parent messages: (pid, kind).
_MESSAGE = struct.Struct("=ii")
_STARTED, _READY = 0, 1
#: Seconds the parent waits beyond the workers' own shutdown bound before SIGKILL.
_PARENT_MARGIN = 5.0
#: Restart back-off: first delay, ceiling, and how long a worker must have run for
#: its next crash to count as a new incident rather than part of a crash loop.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 30.0
_BACKOFF_RESET_AFTER = 10.0
_TICK = 0.02
#: Exit status of a worker whose application could not be started.
_CANNOT_START = 3
_DEFAULT_MAX_RESTARTS = 100

_worker_id: Optional[int] = None


def worker_id() -> Optional[int]:
    """This worker's number (0 to N-1) under a multi-process :func:`serve`, else None."""
    return _worker_id


def _hooks(name: str, value: Union[LifecycleHook, Sequence[LifecycleHook], None]) -> list[Any]:
    if value is None:
        return []
    hooks = [value] if callable(value) else list(value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"{name} must be a callable or a sequence of callables, not {hook!r}")
    return hooks


def serve(
    make_app: AppFactory,
    port: int,
    address: str = "127.0.0.1",
    *,
    processes: int = 1,
    reuse_port: bool = False,
    shutdown_grace: float = DEFAULT_GRACE,
    abandon_after: float = DEFAULT_ABANDON_AFTER,
    max_restarts: Optional[int] = None,
    on_startup: Union[LifecycleHook, Sequence[LifecycleHook], None] = None,
    on_shutdown: Union[LifecycleHook, Sequence[LifecycleHook], None] = None,
    **server_options: Any,
) -> None:
    """Serve ``make_app()`` on ``address:port`` in ``processes`` processes until signalled.

    :param make_app: called once in each worker, after the fork, so that each
        process builds its own connections, pools and caches (nothing created
        before a fork survives it in a usable state). It may be a coroutine
        function: it then runs on the worker's event loop.
    :param processes: number of workers; ``0`` means one per CPU; ``1`` serves in
        this process without forking.
    :param reuse_port: each worker binds its own ``SO_REUSEPORT`` socket (see the
        module documentation).
    :param shutdown_grace: seconds in-flight requests get after SIGTERM/SIGINT.
    :param abandon_after: further seconds for requests that could not be cancelled.
    :param max_restarts: crashed workers are restarted up to this many times in all
        (100 by default); then the parent stops the others and exits 1.
    :param on_startup: callback(s) ``hook(app)``, sync or async, run in each worker
        after ``make_app`` and before it accepts a connection.
    :param on_shutdown: callback(s) ``hook(app)``, sync or async, run in each worker
        in reverse order once it has drained (not after requests were abandoned:
        the process then exits at once).
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
    if max_restarts is not None and (
        isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0
    ):
        raise ValueError(f"max_restarts must be an integer >= 0 or None, not {max_restarts!r}")
    if not callable(make_app):
        raise TypeError(f"make_app must be callable, not {make_app!r}")
    startup = _hooks("on_startup", on_startup)
    shutdown_hooks = _hooks("on_shutdown", on_shutdown)
    GracefulShutdown([], grace=shutdown_grace, abandon_after=abandon_after)  # validates
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port needs SO_REUSEPORT, which this platform lacks")
    if reuse_port and port == 0 and processes != 1:
        raise ValueError("reuse_port needs a fixed port: with port 0 each worker would get its own")
    default_logging()

    def run(sockets: Sequence[socket.socket], supervisor: Optional[_Supervisor]) -> None:
        asyncio.run(
            _serve_in_this_process(
                sockets,
                supervisor,
                make_app,
                startup,
                shutdown_hooks,
                shutdown_grace,
                abandon_after,
                server_options,
            )
        )

    if processes == 1:
        run(tornado.netutil.bind_sockets(port, address, reuse_port=reuse_port), None)
        return
    if processes == 0:
        processes = os.cpu_count() or 1
    sockets = [] if reuse_port else tornado.netutil.bind_sockets(port, address)
    supervisor = _Supervisor(
        sockets,
        processes,
        _DEFAULT_MAX_RESTARTS if max_restarts is None else max_restarts,
        shutdown_grace + abandon_after + _PARENT_MARGIN,
    )
    supervisor.run()  # returns only in a worker
    if reuse_port:
        sockets = tornado.netutil.bind_sockets(port, address, reuse_port=True)
    run(sockets, supervisor)


async def _call(hook: Callable[..., Any], *args: Any) -> Any:
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _serve_in_this_process(
    sockets: Sequence[socket.socket],
    supervisor: Optional[_Supervisor],
    make_app: AppFactory,
    on_startup: list[LifecycleHook],
    on_shutdown: list[LifecycleHook],
    shutdown_grace: float,
    abandon_after: float,
    server_options: dict[str, Any],
) -> None:
    worker = _worker_id
    name = "process" if worker is None else f"worker {worker}"
    try:
        app = await _call(make_app)
        if not isinstance(app, tornado.web.Application):
            raise TypeError(f"make_app returned {app!r}, not a tornado.web.Application")
        for hook in on_startup:
            await _call(hook, app)
    except Exception:
        if supervisor is None:
            raise
        # Said once, here, with the exception; the parent adds one line and
        # decides whether to retry.
        # A retry of a start that failed the same way was reported already.
        level = logging.DEBUG if supervisor.retrying_failed_start else logging.ERROR
        gen_log.log(
            level, "%s (pid %d) cannot start:\n%s", name, os.getpid(), traceback.format_exc()
        )
        _exit_now(_CANNOT_START)
    server = DrainingHTTPServer(app, **server_options)
    server.add_sockets(sockets)
    shutdown = GracefulShutdown([server], grace=shutdown_grace, abandon_after=abandon_after)
    shutdown.install_signal_handlers(_STOP_SIGNALS, ignore_after=True)
    names = ", ".join(f"http://{_address(sock)}/" for sock in sockets)
    gen_log.info("%s (pid %d) serving on %s", name, os.getpid(), names)
    if supervisor is not None:
        supervisor.report_ready()
        if supervisor.pending:  # a signal arrived before the loop could handle it
            shutdown.begin()
    report = await shutdown.wait()
    if report.abandoned:
        # Leaving through asyncio.run would cancel the abandoned requests' tasks,
        # and Tornado answers that with a 500 logged at ERROR (6.6) or an error
        # from the loop (6.4/6.5). They were given their time; end the process here.
        _exit_now(0)
    for hook in reversed(on_shutdown):
        try:
            await _call(hook, app)
        except Exception:
            gen_log.error("Shutdown callback %r failed", hook, exc_info=True)


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


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:  # pragma: no cover - a signal Python does not name
            return f"killed by signal {sig}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send SIGTERM to this worker if the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


class _Slot:
    """One worker position: its current process and its crash history."""

    __slots__ = ("failed_to_start", "failures", "pid", "ready", "restart_at", "started_at")

    def __init__(self) -> None:
        self.failed_to_start = False  # its last process exited with _CANNOT_START
        self.pid: Optional[int] = None
        self.ready = False
        self.started_at = 0.0
        self.failures = 0  # consecutive quick crashes
        self.restart_at: Optional[float] = None


class _Supervisor:
    """The parent: fork the workers, restart them with back-off, stop them all.

    Signals only set a flag: the parent's loop polls its children every 20 ms
    and acts on the flag, so a signal can never interrupt it half-way through
    a fork or a reap.
    """

    def __init__(
        self, sockets: Sequence[socket.socket], workers: int, max_restarts: int, timeout: float
    ) -> None:
        self.sockets = list(sockets)
        self.slots = [_Slot() for _ in range(workers)]
        self.max_restarts = max_restarts
        self.timeout = timeout
        self.parent_pid = os.getpid()
        self.pending: list[int] = []  # in a worker: signals before its loop ran
        self.signum: Optional[int] = None
        self.restarts = 0
        self.any_ready = False
        self.failed_while_stopping: dict[int, int] = {}
        self.retrying_failed_start = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)

    # -- the parent's loop ---------------------------------------------------------

    def run(self) -> None:
        """Supervise until stopped (then exit the process); return in each worker."""
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        status = 1
        try:
            for number in range(len(self.slots)):
                if self._fork(number):
                    return
            status = self._supervise()
        except _InWorker:
            return
        except BaseException:
            gen_log.error("Supervisor failed; stopping every worker", exc_info=True)
            status = 1
        finally:
            if os.getpid() == self.parent_pid:
                status = self._stop_all(status)
        sys.exit(status)

    def _fork(self, number: int) -> bool:
        """Start a worker in slot ``number``; True in the worker itself."""
        slot = self.slots[number]
        self.retrying_failed_start = slot.failed_to_start  # read by the child
        pid = os.fork()
        if pid == 0:
            self._become_worker(number)
            return True
        slot.pid, slot.ready, slot.started_at, slot.restart_at = pid, False, time.monotonic(), None
        return False

    def _supervise(self) -> int:
        """Reap, restart and watch for the stop flag; the exit status once stopping."""
        while not self._stopping():
            self._read_messages()
            self._reap_and_schedule()
            if self._stopping():
                break
            problem = self._give_up_reason()
            if problem:
                gen_log.error("%s; stopping every worker", problem)
                return 1
            now = time.monotonic()
            for number, slot in enumerate(self.slots):
                due = slot.pid is None and slot.restart_at is not None and now >= slot.restart_at
                if due and self._fork(number):
                    raise _InWorker
            if all(slot.pid is None and slot.restart_at is None for slot in self.slots):
                gen_log.info("All workers exited")
                return 0
            time.sleep(_TICK)
        return 0

    def _stopping(self) -> bool:
        """A stop signal arrived (set by the signal handler at any moment)."""
        return self.signum is not None

    def _give_up_reason(self) -> Optional[str]:
        if self.restarts > self.max_restarts:
            return f"Workers crashed {self.restarts} times (max_restarts={self.max_restarts})"
        return self._cannot_start

    _cannot_start: Optional[str] = None

    def _reap_and_schedule(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            self._read_messages()  # a "ready" it sent before dying counts
            number = next((n for n, s in enumerate(self.slots) if s.pid == pid), None)
            if number is None:
                continue
            slot = self.slots[number]
            slot.pid = None
            if self.signum is not None:
                if status != 0:  # exited on its own as the stop began
                    self.failed_while_stopping[pid] = status
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                gen_log.info("Worker %d (pid %d) exited normally", number, pid)
                continue
            ran = time.monotonic() - slot.started_at
            never_ready = not slot.ready
            cannot_start = os.WIFEXITED(status) and os.WEXITSTATUS(status) == _CANNOT_START
            repeated = cannot_start and slot.failed_to_start
            slot.failed_to_start = cannot_start
            if never_ready and cannot_start and not self.any_ready:
                self._cannot_start = (
                    f"Worker {number} (pid {pid}) could not start (see its error above), "
                    "and no worker has started: not retrying"
                )
                return
            slot.failures = 1 if ran >= _BACKOFF_RESET_AFTER else slot.failures + 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (slot.failures - 1))
            self.restarts += 1
            # A start that fails with an error was reported by the worker itself;
            # repeating it at every retry would bury the log.
            level = logging.DEBUG if repeated else logging.WARNING
            what = (
                f"Worker {number} (pid {pid}) "
                f"{'could not start' if never_ready else 'died'}: "
                f"{_describe_status(status)} after {ran:.1f}s"
            )
            if self.restarts > self.max_restarts:
                gen_log.warning("%s; not restarted", what)
                continue  # _give_up_reason() says why and stops the rest
            gen_log.log(level, "%s; restarting in %.1fs", what, delay)
            slot.restart_at = time.monotonic() + delay

    def _read_messages(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, _MESSAGE.size * 64)
            except BlockingIOError:
                return
            if not data:
                return
            for offset in range(0, len(data) - len(data) % _MESSAGE.size, _MESSAGE.size):
                pid, kind = _MESSAGE.unpack_from(data, offset)
                for number, slot in enumerate(self.slots):
                    if slot.pid == pid and kind == _READY and not slot.ready:
                        slot.ready = True
                        slot.failed_to_start = False
                        if slot.failures:
                            gen_log.info("Worker %d started again (pid %d)", number, pid)
                        self.any_ready = True

    def _on_signal(self, signum: int, frame: object) -> None:
        if os.getpid() != self.parent_pid:
            # A worker, between its fork and its event loop: remember the signal.
            self.pending.append(signum)
            return
        if self.signum is None:
            self.signum = signum

    def _stop_all(self, status: int) -> int:
        """Forward the stop signal, reap every worker (SIGKILL after the bound).

        Returns ``status``, or 1 if a worker did not exit 0.
        """
        for sock in self.sockets:
            sock.close()  # new connections are refused, not parked in our backlog
        signum = self.signum or signal.SIGTERM
        live = [slot.pid for slot in self.slots if slot.pid is not None]
        if self.signum is not None:
            gen_log.info(
                "Received %s: stopping %d worker(s)", signal.Signals(signum).name, len(live)
            )
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        failed = dict(self.failed_while_stopping)
        waiting = set(live)
        deadline = time.monotonic() + self.timeout
        while waiting:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                waiting.discard(pid)
                if wait_status != 0:
                    failed[pid] = wait_status
                continue
            if time.monotonic() >= deadline:
                for pid in waiting:
                    gen_log.warning("Worker (pid %d) still running; killing it", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")  # reap the killed ones on the next turns
            time.sleep(_TICK)
        for pid, wait_status in failed.items():
            gen_log.warning("Worker (pid %d) ended: %s", pid, _describe_status(wait_status))
        gen_log.info("All workers stopped")
        return 1 if failed else status

    # -- in a worker ---------------------------------------------------------------

    def _become_worker(self, number: int) -> None:
        global _worker_id
        _worker_id = number
        os.close(self._read_fd)
        random.seed()  # each worker its own random sequence
        _die_with_parent(self.parent_pid)
        os.write(self._write_fd, _MESSAGE.pack(os.getpid(), _STARTED))

    def report_ready(self) -> None:
        """Tell the parent this worker serves (it then counts as started)."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, _MESSAGE.pack(os.getpid(), _READY))
            os.close(self._write_fd)


class _InWorker(BaseException):
    """Leaves the supervisor's loop in a freshly forked worker."""
