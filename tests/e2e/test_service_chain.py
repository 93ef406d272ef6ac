"""A -> B -> C as three processes: a client leaving A cancels C's handler.

Each hop is ``tests/chain_hop.py`` in its own process on loopback, forwarding through
``AsyncHTTPClient`` configured with the cancellable client. The assertions read each
process's own log output.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.chain_hop import Hop, start_chain
from tests.support import nothing_happens_within_sync


@pytest.fixture(scope="module")
def chain() -> Iterator[list[Hop]]:
    hops = start_chain()
    yield hops
    for hop in hops:
        hop.stop()


def send(port: int, ident: str, delay: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /work?delay={delay}&id={ident} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    return sock


def close(sock: socket.socket, how: str) -> None:
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def access_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if " tornado.access: " in line]


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_leaving_a_cancels_every_hop(chain, how):
    a, _, c = chain
    marks = [len(hop.lines) for hop in chain]
    ident = f"leave-{how}"
    sock = send(a.port, ident, 30)
    c.wait_for_line(rf"^INFO hop: C started {ident}$", start=marks[2])
    left = time.monotonic()
    close(sock, how)
    cancelled_at = {}
    for hop, mark in zip(chain, marks):
        found = hop.wait_for_line(rf"{hop.name} cancelled {ident} at ([\d.]+)", start=mark)
        cancelled_at[hop.name] = float(found.group(1))
        hop.wait_for_line(rf"tornado.access: 499 GET /work\?delay=30&id={ident} ", start=mark)
    nothing_happens_within_sync(0.2, what="anything logged late")
    for hop, mark in zip(chain, marks):
        lines = hop.lines[mark:]
        assert problems(lines) == [], hop.name
        assert not [line for line in lines if "completed" in line], hop.name
        statuses = [line.split("tornado.access: ")[1].split()[0] for line in access_lines(lines)]
        assert statuses == ["499"], (hop.name, lines)
    # Promptly. (A's outbound connection is closed by the fetch future's done-callback,
    # which runs before A's handler resumes with CancelledError, so B may log first.)
    assert all(left <= at < left + 2.0 for at in cancelled_at.values()), cancelled_at


def test_connected_client_gets_the_answer_through_the_chain(chain):
    marks = [len(hop.lines) for hop in chain]
    sock = send(chain[0].port, "connected", 0)
    response = b""
    while not response.endswith(b"done\n"):
        chunk = sock.recv(4096)
        assert chunk, response
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    for hop, mark in zip(chain, marks):
        hop.wait_for_line(r"tornado.access: 200 GET /work\?delay=0&id=connected ", start=mark)
        assert problems(hop.lines[mark:]) == []


def test_without_the_toolkit_client_c_works_for_nobody():
    """The same chain forwarding with Tornado's own client: C runs to the end."""
    hops = start_chain(options=("--client=simple",))
    try:
        a, _, c = hops
        sock = send(a.port, "bare", 0.5)
        c.wait_for_line(r"C started bare$")
        close(sock, "rst")
        a.wait_for_line(r"tornado.access: 499 GET ")
        c.wait_for_line(r"C completed bare$")
        c.wait_for_line(r"tornado.access: 200 GET /work\?delay=0.5&id=bare ")
        assert not [line for line in c.lines if re.search(r"C cancelled", line)]
    finally:
        for hop in hops:
            hop.stop()


def test_deadline_on_a_stops_b_and_c_when_it_passes():
    """A's deadline travels in the header: B and C stop when it passes, and A answers 504."""
    c = Hop("C")
    b = Hop("B", f"--next={c.url}")
    a = Hop("A", f"--next={b.url}", "--deadline=0.5")
    hops = [a, b, c]
    try:
        started = time.monotonic()
        sock = send(a.port, "deadline", 30)
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
        elapsed = time.monotonic() - started
        sock.close()
        assert response.startswith(b"HTTP/1.1 504 "), response
        assert b'"DEADLINE_EXCEEDED"' in response
        assert 0.4 < elapsed < 2.0
        for hop in hops:
            hop.wait_for_line(rf"{hop.name} cancelled deadline at ")
        a.wait_for_line(r"tornado.access: 504 GET /work\?delay=30&id=deadline ")
        for hop in (b, c):
            # Its own deadline (from the header) or its caller's abort, whichever was first.
            hop.wait_for_line(r"tornado.access: (504|499) GET /work\?delay=30&id=deadline ")
        nothing_happens_within_sync(0.2, what="anything logged late")
        for hop in hops:
            assert problems(hop.lines) == [], (hop.name, hop.lines)
            assert not [line for line in hop.lines if "completed" in line], hop.name
    finally:
        for hop in hops:
            hop.stop()
