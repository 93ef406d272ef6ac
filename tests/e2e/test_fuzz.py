"""Hypothesis fuzzing of the demo API and a registry app: bad input never gives a 5xx.

The server runs in a thread with its own event loop, so hypothesis can drive it
with plain blocking sockets, one example at a time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import tornado.httpserver
import tornado.netutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import demo_server

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    started = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def start() -> None:
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server = tornado.httpserver.HTTPServer(demo_server.make_app())
            server.add_sockets(sockets)
            holder["port"] = sockets[0].getsockname()[1]
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = asyncio.Event()
            started.set()
            await holder["stop"].wait()  # type: ignore[attr-defined]
            server.stop()
            await server.close_all_connections()

        loop.run_until_complete(start())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield int(holder["port"])  # type: ignore[call-overload]
    server_loop = holder["loop"]
    server_loop.call_soon_threadsafe(holder["stop"].set)  # type: ignore[attr-defined]
    thread.join(10)


def request(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, payload


def check_invariants(status: int, headers: dict[str, str], payload: bytes) -> None:
    assert status < 500, (status, payload[:300])
    assert b"Traceback" not in payload
    if status >= 400 and payload:
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/json"):
            document = json.loads(payload)
            assert isinstance(document["errcode"], str)
            assert isinstance(document["error"], str)
        else:
            assert content_type.startswith("text/html"), content_type
            assert b"<script" not in payload.lower()


path_segments = st.one_of(
    st.text(min_size=0, max_size=30).map(lambda t: quote(t, safe="")),
    st.binary(min_size=1, max_size=20).map(lambda b: "".join(f"%{byte:02X}" for byte in b)),
    st.sampled_from(
        ["..", ".", "%2e%2e", "%00", "%2F", "%", "%zz", "echo", "big", "slow", "hello", "metrics"]
    ),
    st.integers().map(str),
    st.just("x" * 5000),
)
prefixes = st.sampled_from(
    [
        "/api/v1/",
        "/api/v1/echo/",
        "/api/v1/hello/",
        "/errors/json?kind=",
        "/errors/html?msg=<script>&kind=",
        "/",
    ]
)


@FUZZ
@given(
    prefix=prefixes,
    segments=st.lists(path_segments, max_size=4),
    method=st.sampled_from(
        ["GET", "HEAD", "DELETE", "OPTIONS", "PUT", "PATCH", "POST", "BREW", "TRACE"]
    ),
)
def test_random_paths_and_methods(port, prefix, segments, method):
    target = prefix + "/".join(segments)
    status, headers, payload = request(port, method, target, {"Accept": "*/*"}, b"")
    check_invariants(status, headers, payload)


json_bodies = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"name":' * n + b'"x"' + b"}" * n),
    st.sampled_from(
        [
            b'{"name": 1e999}',
            b'{"name": NaN}',
            b'{"name": "\xff"}',
            b"1" * 5000,
            b'{"name": "ok", "n": 123456789012345678901234567890}',
        ]
    ),
    st.builds(
        lambda name: json.dumps({"name": name}).encode(),
        st.one_of(st.text(), st.integers(), st.none(), st.lists(st.integers())),
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/vnd.x+json",
        "",
        "multipart/form-data; boundary=x",
    ]
)


@FUZZ
@given(body=json_bodies, content_type=content_types, method=st.sampled_from(["POST", "PUT", "GET"]))
def test_random_json_bodies(port, body, content_type, method):
    headers = {"Content-Type": content_type} if content_type else {}
    status, response_headers, payload = request(port, method, "/api/v1/echo/7", headers, body)
    check_invariants(status, response_headers, payload)


@FUZZ
@given(
    accept=st.one_of(
        st.text(max_size=60).filter(lambda t: "\r" not in t and "\n" not in t),
        st.sampled_from(["text/html", "application/json;q=0", "*/*;q=abc"]),
    ),
    kind=st.sampled_from(["notfound", "ratelimit", "echo", "other", ""]),
    msg=st.text(max_size=40),
)
def test_random_accept_headers_on_negotiated_errors(port, accept, kind, msg):
    target = f"/errors/negotiated?kind={quote(kind)}&msg={quote(msg)}"
    accept_value = accept.encode("latin-1", "replace").decode("latin-1")
    status, headers, payload = request(port, "GET", target, {"Accept": accept_value}, b"")
    check_invariants(status, headers, payload)
