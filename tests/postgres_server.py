"""A throwaway PostgreSQL server for tests: Debian's binaries, a temp dir, loopback.

The server comes from the OS package (``apt-get install postgresql``), whose binaries
live under ``/usr/lib/postgresql/<version>/bin`` (not on PATH). PostgreSQL refuses to
run as root, so when the tests run as root the cluster is created and started as the
``postgres`` system user the package creates.

``CI=true`` turns a missing server into a failure: CI installs it, so its absence
there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from tests.servers import component_missing, free_port
from tests.support import wait_until_sync

READY = "database system is ready to accept connections"


def find_bindir() -> Optional[Path]:
    """The directory holding ``initdb`` and ``postgres``, newest version first."""
    candidates = []
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    candidates += [Path(p).parent for p in sorted(found, key=version, reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server in a fresh temp dir on a loopback port; yield its DSN."""
    bindir = find_bindir()
    if bindir is None:
        component_missing("PostgreSQL is not installed (apt-get install postgresql)")
    run_as: Optional[str] = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            component_missing(
                "running as root, and there is no 'postgres' user to run PostgreSQL as"
            )
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="tjs-postgres-"))
    if run_as is not None:
        shutil.chown(root, user=run_as)
    data = root / "data"
    log_path = root / "server.log"
    port = free_port()
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "test", "--auth=trust", "-E", "UTF8", "-N"],
        check=True,
        capture_output=True,
        user=run_as,
        cwd=root,
        timeout=120,
    )
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                str(bindir / "postgres"),
                *("-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root)),
                *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                *("-c", "full_page_writes=off", "-c", "max_connections=20"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=run_as,
            cwd=root,
        )
    try:

        def ready() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited:\n{log_path.read_text()}")
            return READY in log_path.read_text(errors="replace")

        try:
            wait_until_sync(ready, what="PostgreSQL ready", timeout=60, interval=0.05)
        except AssertionError as error:
            raise RuntimeError(f"{error}:\n{log_path.read_text()}") from None
        yield f"postgresql://test@127.0.0.1:{port}/postgres"
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)
