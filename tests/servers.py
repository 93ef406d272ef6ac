"""External servers for tests: redis-server, nginx and headless Chromium.

Each comes from the Debian package that ``.ci/run`` installs (see
``.ci/apt-packages.txt``), runs from a temporary directory, listens on loopback
only, and is stopped by the context manager that started it. When the binary is
missing the test is skipped with the reason, except under ``CI=true``, where a
missing component is a failure: CI must never pass by skipping.

Tests use them through the fixtures of ``tests/components/conftest.py``, one per
component: ``redis_server``, ``postgres_dsn``, ``chromium`` and ``nginx_launcher``
(a function: ``nginx_launcher(upstream_port)`` starts nginx in front of that port
and the fixture stops it after the test).

``NginxServer`` takes the ``location`` block (or a whole ``server`` block, or a
whole http-context ``site`` file such as ``deploy/nginx.conf``) to test, so a
deployment configuration can be checked as it will run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Callable, NoReturn, Optional

import pytest

from tests.support import wait_until_sync

__all__ = [
    "Chromium",
    "NginxLauncher",
    "NginxServer",
    "RedisServer",
    "component_missing",
    "free_port",
    "require_binary",
]


def require_binary(name: str, package: str, *candidates: str) -> str:
    """The path of ``name`` (or of the first existing ``candidates``); skip or fail without it."""
    for candidate in (*candidates, name):
        found = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if found:
            return found
    return component_missing(
        f"{name} not found: install the Debian package {package!r} (apt-get install {package})"
    )


def component_missing(reason: str) -> NoReturn:
    """Skip locally; fail under ``CI=true``, where ``.ci/run`` must have installed it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run this test, not skip it", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        wait_until_sync(
            listening, what=f"{what} listening on port {port}", timeout=15, interval=0.05
        )
    except AssertionError as error:
        raise RuntimeError(f"{error}: {_tail(log)}") from None


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


class _Process:
    process: Optional[subprocess.Popen[bytes]] = None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash or an OOM kill would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): its sockets stay open and nothing answers,
        as with a server stuck in a long pause or swapped out."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen process run again (SIGCONT)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def __exit__(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """``redis-server`` on a loopback port, with no persistence, in ``directory``."""

    def __init__(self, directory: Path, port: Optional[int] = None) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.directory = Path(directory) / "redis"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, self.process, "redis-server", log)
        return self

    def __enter__(self) -> RedisServer:
        return self.start()


_NGINX_CONF = """\
{user}
daemon off;
master_process {master_process};
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{http}
}}
"""

_NGINX_HTTP = """\
    access_log {root}/access.log;
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}
    {server}
"""

#: Plain reverse proxying with nginx's defaults (buffering on), HTTP/1.1 upstream.
DEFAULT_LOCATION = """\
location / {
    proxy_pass http://app;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
}
"""


class NginxServer(_Process):
    """nginx proxying a loopback port to ``upstream_port``, configured in ``directory``.

    ``location`` replaces :data:`DEFAULT_LOCATION`; ``server`` replaces the whole
    ``server`` block (use ``{port}`` for the listening port and the upstream name
    ``app``). ``site`` replaces everything in the ``http`` block but the temp paths:
    a whole http-context file, with ``$PORT``, ``$UPSTREAM_PORT`` and ``$ROOT``
    replaced (nginx's own ``$variables`` are untouched); its access log, if it is
    to be read with :attr:`access_log`, goes to ``$ROOT/access.log``.

    ``master_process`` runs nginx as deployed (a master and one worker) rather
    than as one process; ``graceful_stop`` stops it with SIGQUIT (finish what is
    in flight) rather than SIGTERM.
    """

    def __init__(
        self,
        directory: Path,
        upstream_port: int,
        *,
        location: str = DEFAULT_LOCATION,
        server: Optional[str] = None,
        site: Optional[str] = None,
        port: Optional[int] = None,
        master_process: bool = False,
        graceful_stop: bool = False,
    ) -> None:
        self.binary = require_binary("nginx", "nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")
        self.root = Path(directory) / "nginx"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.upstream_port = upstream_port
        self.graceful_stop = graceful_stop
        if site is None:
            block = server or "server {{\n    listen 127.0.0.1:{port};\n    {location}\n}}"
            http = _NGINX_HTTP.format(
                root=self.root,
                upstream_port=upstream_port,
                server=block.format(port=self.port, location=location),
            )
        else:
            http = "    access_log off;\n" + (
                site.replace("$UPSTREAM_PORT", str(upstream_port))
                .replace("$PORT", str(self.port))
                .replace("$ROOT", str(self.root))
            )
        self.config = _NGINX_CONF.format(
            user="user root;" if os.geteuid() == 0 else "",
            master_process="on" if master_process else "off",
            root=self.root,
            http=http,
        )

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def access_log(self) -> list[str]:
        """The lines of ``access.log`` so far (nginx writes one as a response ends)."""
        path = self.root / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        process = self.process
        if self.graceful_stop and process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        super().stop()  # SIGTERM, then SIGKILL, if it still runs

    def start(self) -> NginxServer:
        conf = self.root / "nginx.conf"
        conf.write_text(self.config)
        log = self.root / "error.log"
        self.process = subprocess.Popen(
            [self.binary, "-e", str(log), "-p", str(self.root), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process, "nginx", log)
        return self

    def __enter__(self) -> NginxServer:
        return self.start()


class Chromium(_Process):
    """Headless Chromium with its DevTools endpoint on a loopback port.

    Runs as root without the sandbox (CI runs as root), with a fresh profile and
    none of the background traffic (updates, sync, QUIC).
    """

    def __init__(self, directory: Optional[Path] = None) -> None:
        self.binary = require_binary("chromium", "chromium", "/usr/bin/chromium")
        self._profile = tempfile.TemporaryDirectory(
            prefix="chromium-", dir=str(directory) if directory else None
        )
        self.port = free_port()

    def start(self) -> Chromium:
        log = Path(self._profile.name) / "chromium.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--disable-dev-shm-usage",
                    f"--user-data-dir={self._profile.name}/profile",
                    "--remote-debugging-address=127.0.0.1",
                    f"--remote-debugging-port={self.port}",
                    "about:blank",
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group: stop() ends its helpers too
            )
        _wait_for_port(self.port, self.process, "chromium", log)
        return self

    def page_websocket_url(self) -> str:
        """The DevTools WebSocket of the first page target."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        pages: list[dict[str, str]] = []

        def has_a_page() -> bool:
            with opener.open(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as reply:
                targets = json.loads(reply.read())
            pages[:] = [t for t in targets if t.get("type") == "page"]
            return bool(pages)

        wait_until_sync(has_a_page, what="a chromium page target", timeout=15, interval=0.1)
        return str(pages[0]["webSocketDebuggerUrl"])

    def stop(self) -> None:
        process = self.process
        super().stop()
        if process is not None:
            # Chromium's helper processes (zygote, renderers) may still be writing
            # to the profile after the browser process exited; end the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

        def removed() -> bool:
            try:
                self._profile.cleanup()
            except OSError:  # a helper wrote a last file while the tree was removed
                return False
            return True

        wait_until_sync(removed, what="the chromium profile removed", timeout=10, interval=0.1)

    def __enter__(self) -> Chromium:
        return self.start()


#: The ``nginx_launcher`` fixture: ``launch(upstream_port, **NginxServer options)``.
NginxLauncher = Callable[..., NginxServer]
