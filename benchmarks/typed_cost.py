"""What typed servlets cost: HTTP throughput, validation/encoding per request, 1 MB responses.

Usage::

    python benchmarks/typed_cost.py [--requests 3000] [--rounds 5] [-c 8]

Three measurements, side by side in one run:

1. **HTTP**: a typed ``on_POST`` (a ~1 KB body validated into a msgspec Struct, a
   Struct returned) against the same servlet written untyped (``self.json_body``,
   hand validation with ``require()`` and range checks, a dict returned). A real
   Tornado ``HTTPServer`` and a keep-alive ``asyncio.Protocol`` client share one
   loop in this process (as in ``servlet_cost.py``); rounds alternate the order and
   the median requests/s of each is printed, with the CPU time per request.
2. **In-process validation + encoding** of the same body, no HTTP: the toolkit's
   typed path (msgspec decode into the Struct, msgspec encode of the result) and
   pydantic v2 as FastAPI drives it (``json.loads``, ``model_validate``,
   ``model_dump(mode="json")``, ``json.dumps``), plus pydantic's own fastest path
   (``model_validate_json`` + ``model_dump_json``). Skipped if pydantic is missing.
3. **1 MB response**: a list of Structs encoded by msgspec (a typed return) against
   the same document as plain dicts encoded by the codec (orjson when installed).

Binds 127.0.0.1 only; every run is bounded by its request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import msgspec
import tornado.httpserver
import tornado.web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tornado_jsonservlet import BadRequest, JsonServlet, ServletRegistry
from tornado_jsonservlet.jsonio.bodies import require
from tornado_jsonservlet.jsonio.codec import active_backend, encode

TIMEOUT = 120.0


class Address(msgspec.Struct):
    street: str
    city: str
    zip: str
    country: str


class Order(msgspec.Struct):
    customer: str
    email: str
    quantity: int
    price: float
    address: Address
    tags: list[str]
    note: str


class Receipt(msgspec.Struct):
    id: int
    customer: str
    total: float
    city: str
    tags: list[str]


BODY = {
    "customer": "Zoë Example",
    "email": "zoe@example.org",
    "quantity": 3,
    "price": 19.99,
    "address": {"street": "1 Rue de la Paix", "city": "Paris", "zip": "75002", "country": "FR"},
    "tags": ["gift", "express", "fragile", "priority", "weekend"],
    "note": "Leave with the concierge. " * 30,
}
BODY_BYTES = json.dumps(BODY).encode()


class TypedOrders(JsonServlet):
    PATTERNS = ("/typed",)

    def on_POST(self, order: Order) -> Receipt:
        return Receipt(
            1, order.customer, order.quantity * order.price, order.address.city, order.tags
        )


def _text(body: dict[str, Any], name: str) -> str:
    return require(body, name, str)


class UntypedOrders(JsonServlet):
    PATTERNS = ("/untyped",)

    def on_POST(self) -> Any:
        body = self.json_body
        customer, email, note = _text(body, "customer"), _text(body, "email"), _text(body, "note")
        quantity = require(body, "quantity", int)
        price = require(body, "price", float)
        address = require(body, "address", dict)
        for name in ("street", "city", "zip", "country"):
            if not isinstance(address.get(name), str):
                raise BadRequest(f"address.{name} must be a string", "INVALID_PARAM")
        tags = require(body, "tags", list)
        if not all(isinstance(tag, str) for tag in tags):
            raise BadRequest("tags must be strings", "INVALID_PARAM")
        del email, note
        return {
            "id": 1,
            "customer": customer,
            "total": quantity * price,
            "city": address["city"],
            "tags": tags,
        }


def make_app() -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(TypedOrders)
    registry.register(UntypedOrders)
    return tornado.web.Application(
        registry.urlspecs(catch_all=False), log_function=lambda handler: None
    )


# -- the client ------------------------------------------------------------------------


def request_bytes(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY_BYTES)}\r\n\r\n"
    ).encode() + BODY_BYTES


class _Client(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.run.send(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            start = head.find(b"content-length:")
            stop = head.find(b"\r\n", start)
            length = int(head[start + 15 : stop if stop >= 0 else len(head)].strip() or 0)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self.run.fail(self.buffer[:end])
                return
            self.buffer = self.buffer[end:]
            self.run.completed(self.transport)


class _Run:
    def __init__(self, requests: int, payload: bytes) -> None:
        self.to_send = requests
        self.to_receive = requests
        self.payload = payload
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send(self, transport: asyncio.Transport) -> None:
        if self.to_send > 0:
            self.to_send -= 1
            transport.write(self.payload)

    def completed(self, transport: asyncio.Transport) -> None:
        self.to_receive -= 1
        if self.to_receive == 0 and not self.done.done():
            self.done.set_result(None)
        else:
            self.send(transport)

    def fail(self, response: bytes) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(response[:300].decode(errors="replace")))


async def measure(port: int, path: str, requests: int, connections: int) -> tuple[float, float]:
    """``(requests per second, CPU microseconds per request)``."""
    loop = asyncio.get_running_loop()
    run = _Run(requests, request_bytes(path))
    cpu, wall = time.process_time(), time.perf_counter()
    transports = []
    for _ in range(connections):
        transport, _protocol = await loop.create_connection(lambda: _Client(run), "127.0.0.1", port)
        transports.append(transport)
    await asyncio.wait_for(run.done, TIMEOUT)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for transport in transports:
        transport.close()
    return requests / wall, cpu / requests * 1e6


async def http_side_by_side(requests: int, rounds: int, connections: int) -> None:
    server = tornado.httpserver.HTTPServer(make_app())
    server.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    results: dict[str, list[tuple[float, float]]] = {"typed": [], "untyped": []}
    await measure(port, "/typed", 300, connections)  # warm up both
    await measure(port, "/untyped", 300, connections)
    for index in range(rounds):
        order = ["typed", "untyped"] if index % 2 == 0 else ["untyped", "typed"]
        for name in order:
            results[name].append(await measure(port, f"/{name}", requests, connections))
    server.stop()
    print(f"1. HTTP, ~{len(BODY_BYTES)} B body, {requests} requests x {rounds} rounds,", end="")
    print(f" -c {connections}")
    medians = {}
    for name, values in results.items():
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        medians[name] = rps
        print(f"   {name:8} {rps:8.0f} req/s   {cpu:6.1f} us CPU/request")
    print(f"   typed / untyped throughput: {medians['typed'] / medians['untyped']:.2f}x")


def per_call(fn: Any, repeat: int = 7, number: int = 5000) -> float:
    """Median microseconds per call."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(times)


def in_process() -> None:
    decoder = msgspec.json.Decoder(Order)

    def toolkit() -> bytes:
        order = decoder.decode(BODY_BYTES)
        receipt = Receipt(
            1, order.customer, order.quantity * order.price, order.address.city, order.tags
        )
        return msgspec.json.encode(receipt)

    print("2. validation + encoding per request, in process (no HTTP)")
    print(f"   {'toolkit typed path (msgspec)':50} {per_call(toolkit):6.2f} us")
    try:
        import pydantic
    except ImportError:
        print("   pydantic is not installed: FastAPI/pydantic figures skipped")
        return

    class PAddress(pydantic.BaseModel):
        street: str
        city: str
        zip: str
        country: str

    class POrder(pydantic.BaseModel):
        customer: str
        email: str
        quantity: int
        price: float
        address: PAddress
        tags: list[str]
        note: str

    class PReceipt(pydantic.BaseModel):
        id: int
        customer: str
        total: float
        city: str
        tags: list[str]

    def fastapi_like() -> bytes:
        order = POrder.model_validate(json.loads(BODY_BYTES))
        receipt = PReceipt(
            id=1,
            customer=order.customer,
            total=order.quantity * order.price,
            city=order.address.city,
            tags=order.tags,
        )
        return json.dumps(receipt.model_dump(mode="json"), separators=(",", ":")).encode()

    def pydantic_fastest() -> bytes:
        order = POrder.model_validate_json(BODY_BYTES)
        receipt = PReceipt(
            id=1,
            customer=order.customer,
            total=order.quantity * order.price,
            city=order.address.city,
            tags=order.tags,
        )
        return receipt.model_dump_json().encode()

    label = f"pydantic {pydantic.VERSION}, as FastAPI drives it"
    print(f"   {label:50} {per_call(fastapi_like):6.2f} us")
    label = "pydantic, validate_json + model_dump_json"
    print(f"   {label:50} {per_call(pydantic_fastest):6.2f} us")


class Row(msgspec.Struct):
    id: int
    name: str
    email: str
    score: float
    active: bool
    created: datetime.datetime


def big_response() -> None:
    at = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    rows = [Row(i, f"user {i}", f"user{i}@example.org", i / 7, i % 2 == 0, at) for i in range(7000)]
    dicts = [msgspec.to_builtins(row) for row in rows]  # the same document, created as text
    size = len(msgspec.json.encode(rows))
    assert msgspec.json.encode(rows) == encode(dicts)
    print(f"3. {size / 1e6:.2f} MB response, encoding only")
    typed = per_call(lambda: msgspec.json.encode(rows), 5, 20) / 1000
    plain = per_call(lambda: encode(dicts), 5, 20) / 1000
    print(f"   {'typed: list of Structs, msgspec':50} {typed:6.2f} ms")
    print(f"   {f'plain dicts, codec ({active_backend()})':50} {plain:6.2f} ms")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-c", "--connections", type=int, default=8)
    args = parser.parse_args(argv)
    asyncio.run(http_side_by_side(args.requests, args.rounds, args.connections))
    in_process()
    big_response()


if __name__ == "__main__":
    main()
