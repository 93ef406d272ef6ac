"""Test helpers: real clients that leave the way real clients do.

A disconnect cannot be simulated faithfully by calling ``on_connection_close``
by hand: what matters is how Tornado's stream machinery sees a FIN or an RST,
and when. :class:`RawHTTPConnection` opens a real TCP connection to a test
server, sends a request byte for byte, and closes with FIN (orderly) or RST
(``SO_LINGER`` 0, as when a process is killed or a proxy gives up).
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

__all__ = [
    "AwaitPointResult",
    "CloseHow",
    "DisconnectReport",
    "RawHTTPConnection",
    "disconnect_at_every_await",
]

CloseHow = Literal["fin", "rst"]


class RawHTTPConnection:
    """One client connection to a local test server, closed on the test's command.

    .. versionadded:: 0.1
    """

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawHTTPConnection:
        """Connect to ``host:port`` (a local test server)."""
        stream = await TCPClient().connect(host, port)
        return cls(stream)

    async def send_request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        headers: Optional[dict[str, str]] = None,
        body: Union[bytes, str] = b"",
        content_length: Optional[int] = None,
    ) -> None:
        """Send one HTTP/1.1 request. ``content_length`` may overstate ``body``
        to leave the server waiting for the rest of an upload."""
        data = body.encode() if isinstance(body, str) else body
        all_headers = {"Host": "127.0.0.1"}
        if data or content_length is not None or method in ("POST", "PUT", "PATCH"):
            length = len(data) if content_length is None else content_length
            all_headers["Content-Length"] = str(length)
        all_headers.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in all_headers.items()
        )
        await self.stream.write(head.encode("latin-1") + b"\r\n" + data)

    async def send_raw(self, data: bytes) -> None:
        """Send ``data`` as it is: for malformed requests and hand-built uploads."""
        await self.stream.write(data)

    async def read_until_close(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        try:
            return await asyncio.wait_for(self.stream.read_until_close(), timeout)
        except StreamClosedError:
            return b""

    def close(self, how: CloseHow = "fin") -> None:
        """Close the connection: ``"fin"`` for an orderly close, ``"rst"`` to reset it."""
        if how == "rst" and self.stream.socket is not None:
            self.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.stream.close()

    @property
    def closed(self) -> bool:
        """True once the connection is closed, by either side."""
        return self.stream.closed()


# -- disconnect at every await point ---------------------------------------------------


@dataclass
class AwaitPointResult:
    """What happened when the client left while the handler was suspended at one point.

    .. versionadded:: 0.1
    """

    point: int
    interrupted: bool  # the handler did not resume normally from that await
    statuses: list[int]  # access-log statuses of the request
    errors: list[str]  # ERROR records logged during the run
    disconnect_callbacks: int  # times a disconnect callback ran
    leaked_tasks: int  # tasks still pending after the request ended
    next_status: int  # status of a normal request sent afterwards


@dataclass
class DisconnectReport:
    """The outcome of :func:`disconnect_at_every_await`.

    .. versionadded:: 0.1
    """

    normal_status: int
    points: list[AwaitPointResult] = field(default_factory=list)

    @property
    def covered(self) -> int:
        """How many await points were visited."""
        return len(self.points)

    def problems(self) -> list[str]:
        """One line per check that failed at some await point; empty when all passed."""
        found = []
        for result in self.points:
            where = f"await point {result.point}"
            if not result.interrupted:
                found.append(f"{where}: the handler resumed normally after the disconnect")
            if result.statuses != [499]:
                found.append(f"{where}: access log statuses {result.statuses}, expected [499]")
            if result.errors:
                found.append(f"{where}: ERROR records {result.errors}")
            if result.disconnect_callbacks != 1:
                found.append(
                    f"{where}: disconnect callback ran {result.disconnect_callbacks} times"
                )
            if result.leaked_tasks:
                found.append(f"{where}: {result.leaked_tasks} tasks still pending")
            if result.next_status != self.normal_status:
                found.append(f"{where}: next request got {result.next_status}")
        return found


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Watch:
    """Wraps the handler's task coroutine, counts its suspensions, and holds one.

    At suspension number ``stop_at`` the task is made to wait on a *gate* instead of
    the future the handler awaits. The gate opens only once that future is done and
    the server has noticed the disconnect, so the disconnect always lands while the
    handler is suspended exactly there (and not one await later).
    """

    def __init__(
        self, stop_at: int, timeout: float, on_hold: Optional[Callable[[Any], None]] = None
    ) -> None:
        self.stop_at = stop_at
        self.timeout = timeout
        self.on_hold = on_hold
        self.suspensions = 0
        self.handler: Any = None
        self.held = asyncio.Event()
        self.interrupted = False
        self.task: Optional[asyncio.Task[Any]] = None

    def factory(
        self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        code = getattr(coro, "cr_code", None)
        if self.task is None and code is not None and code.co_name == "_execute":
            self.handler = coro.cr_frame.f_locals.get("self")
            coro = _CountingCoroutine(coro, self)
            self.task = asyncio.Task(coro, loop=loop, **kwargs)
            return self.task
        return asyncio.Task(coro, loop=loop, **kwargs)

    def gate(self, awaited: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self.timeout

        def check() -> None:
            if gate.done():
                return
            inner_done = awaited is None or awaited.done()
            noticed = bool(getattr(self.handler, "client_disconnected", False))
            if inner_done and (noticed or loop.time() > deadline):
                if awaited is not None and (awaited.cancelled() or awaited.exception() is not None):
                    self.interrupted = True
                gate.set_result(None)
            else:
                loop.call_later(0.001, check)

        loop.call_soon(check)
        if self.on_hold is not None:
            self.on_hold(self.handler)
        self.held.set()
        return gate


def _handler_code_awaits(coro: Any) -> bool:
    """Whether the request's ``_execute`` chain is suspended inside handler code.

    ``_execute`` overrides (the toolkit's among them) await Tornado's; below the
    last of them sits either handler code (a coroutine: ``prepare`` or the verb)
    or Tornado's own wait for a streamed body (a future).
    """
    awaited = getattr(coro, "cr_await", None)
    while inspect.iscoroutine(awaited) and awaited.cr_code.co_name == "_execute":
        awaited = awaited.cr_await
    return inspect.iscoroutine(awaited)


class _CountingCoroutine(collections.abc.Coroutine):  # type: ignore[type-arg]
    def __init__(self, inner: Any, watch: _Watch) -> None:
        self._inner = inner
        self._watch = watch
        self._awaited: Any = None

    def send(self, value: Any) -> Any:
        return self._after(self._inner.send(value))

    def throw(self, *args: Any) -> Any:
        error = args[1] if len(args) > 1 and args[1] is not None else args[0]
        if isinstance(error, asyncio.CancelledError) or error is asyncio.CancelledError:
            if self._watch.suspensions == self._watch.stop_at:
                self._watch.interrupted = True
            if self._awaited is not None and not self._awaited.done():
                self._awaited.cancel()  # what the Task would have done
        if not isinstance(error, BaseException):
            error = error()
        return self._after(self._inner.throw(error))

    def close(self) -> None:
        self._inner.close()

    def __await__(self) -> Any:
        raise TypeError("not awaitable")

    def _after(self, yielded: Any) -> Any:
        self._awaited = yielded
        if not _handler_code_awaits(self._inner):
            # Tornado's own code is waiting (for a streamed body), not the handler's.
            return yielded
        self._watch.suspensions += 1
        if self._watch.suspensions == self._watch.stop_at:
            gate = self._watch.gate(yielded)
            # What ``await future`` sets before yielding it; a Task refuses a bare yield.
            gate._asyncio_future_blocking = True
            return gate
        return yielded


async def _run_once(
    port: int,
    method: str,
    path: str,
    headers: Optional[dict[str, str]],
    body: bytes,
    *,
    stop_at: int,
    how: CloseHow,
    timeout: float,
    on_hold: Optional[Callable[[Any], None]] = None,
) -> tuple[_Watch, list[logging.LogRecord]]:
    loop = asyncio.get_running_loop()
    watch = _Watch(stop_at, timeout, on_hold)
    recorder = _Recorder()
    root = logging.getLogger()
    root.addHandler(recorder)
    previous_level = root.level
    root.setLevel(min(previous_level, logging.INFO) if previous_level else logging.INFO)
    previous_factory = loop.get_task_factory()
    loop.set_task_factory(watch.factory)
    try:
        conn = await RawHTTPConnection.open(port)
        await conn.send_request(
            method, path, headers={**(headers or {}), "Connection": "close"}, body=body
        )
        if stop_at:
            done = asyncio.ensure_future(watch.held.wait())
            await asyncio.wait([done], timeout=timeout)
            if not done.done():
                done.cancel()
            conn.close(how)
        else:
            await conn.read_until_close(timeout)
        if watch.task is not None:
            await asyncio.wait([watch.task], timeout=timeout)
        for _ in range(5):
            await asyncio.sleep(0)
    finally:
        loop.set_task_factory(previous_factory)
        root.removeHandler(recorder)
        root.setLevel(previous_level)
    return watch, recorder.records


async def disconnect_at_every_await(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    headers: Optional[dict[str, str]] = None,
    body: Union[bytes, str] = b"",
    how: CloseHow = "rst",
    timeout: float = 5.0,
    max_points: int = 200,
) -> DisconnectReport:
    """Disconnect the client once at each await point of the request's handler.

    Runs the request once connected to count the handler task's suspensions (its
    *await points*), then once per point, closing the connection while the handler
    is suspended exactly there. After each run it records whether the handler was
    interrupted at that point, the access-log statuses, ERROR records, how often a
    disconnect callback ran, leaked tasks, and the status of a normal follow-up
    request. Raises ``AssertionError`` listing every problem, or if no await point
    was found; returns the report otherwise.

    How: a task factory, installed for the duration, wraps the coroutine of the
    request's task (Tornado's ``RequestHandler._execute``) and counts the times it
    suspends inside handler code (``prepare`` or the verb method). At the chosen
    point the task is held on a gate that opens only once the awaited future is done
    and the server has noticed the disconnect, so the cancellation cannot miss.

    Limits: await points are suspensions of the handler's own task. Work in other
    tasks or threads is not visited; Tornado's wait for a streamed body is not a
    handler await point; and a handler whose number of awaits changes from run to
    run is reported as failing at the points it skipped.

    .. versionadded:: 0.1
    """
    data = body.encode() if isinstance(body, str) else body
    watch, records = await _run_once(
        port, method, path, headers, data, stop_at=0, how=how, timeout=timeout
    )
    normal = _statuses(records)
    report = DisconnectReport(normal_status=normal[-1] if normal else 0)
    total = min(watch.suspensions, max_points)
    if total == 0:
        raise AssertionError(
            f"{method} {path}: the handler never awaited; nothing to disconnect at"
        )
    for point in range(1, total + 1):
        baseline = asyncio.all_tasks()
        callbacks: list[None] = []

        def watch_callbacks(handler: Any, callbacks: list[None] = callbacks) -> None:
            register = getattr(handler, "add_disconnect_callback", None)
            if register is not None:
                register(callbacks.append, None)

        run, records = await _run_once(
            port,
            method,
            path,
            headers,
            data,
            stop_at=point,
            how=how,
            timeout=timeout,
            on_hold=watch_callbacks,
        )
        leaked = [t for t in asyncio.all_tasks() - baseline if not t.done()]
        _, next_records = await _run_once(
            port, method, path, headers, data, stop_at=0, how=how, timeout=timeout
        )
        next_statuses = _statuses(next_records)
        report.points.append(
            AwaitPointResult(
                point=point,
                interrupted=run.interrupted,
                statuses=_statuses(records),
                errors=[r.getMessage() for r in records if r.levelno >= logging.ERROR],
                disconnect_callbacks=len(callbacks),
                leaked_tasks=len(leaked),
                next_status=next_statuses[-1] if next_statuses else 0,
            )
        )
    problems = report.problems()
    if problems:
        raise AssertionError(f"{method} {path}: " + "; ".join(problems))
    return report


def _statuses(records: list[logging.LogRecord]) -> list[int]:
    found = []
    for record in records:
        if record.name == "tornado.access":
            head = record.getMessage().split(" ", 1)[0]
            if head.isdigit():
                found.append(int(head))
    return found
