"""What writing ``Decimal`` exactly costs the encoder, per document shape.

Usage: ``python benchmarks/decimal_cost.py [--rounds 7] [--number 20]``

With ujson, ``encode`` looks for ``Decimal`` values (which ujson would write as doubles)
in any output holding a fraction or an exponent. This times, in one process and
interleaved, ujson alone (``ujson.dumps`` as the codec calls it, no search) against
``encode`` with the ujson backend, and ``encode`` with orjson when it is installed, for:
the P2 document (1 MB with floats, no ``Decimal``), the same without floats, the P1
document, and the P2 document with one ``Decimal`` per record (search, then a second
encode). Prints medians in ms (µs for P1) and the ratio to ujson alone. No server, no
network; bounded by ``--rounds`` x ``--number`` encodes per cell.
"""

from __future__ import annotations

import argparse
import decimal
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import BIG, SMALL

from tornado_jsonservlet.jsonio import codec


def _without_floats(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "items": [{**item, "score": int(item["score"])} for item in doc["items"]]}


def _with_decimals(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        **doc,
        "items": [{**item, "price": decimal.Decimal("19.99")} for item in doc["items"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20)
    args = parser.parse_args()
    documents = {
        "P2, 1 MB with floats": BIG,
        "P2 without floats": _without_floats(BIG),
        "P1 small (floats)": SMALL,
        "P2 + a Decimal per record": _with_decimals(BIG),
    }
    fast = codec._fast_dumps

    def with_ujson(doc: Any) -> Callable[[], Any]:
        def run() -> Any:
            codec._fast_dumps = None
            try:
                return codec.encode(doc)
            finally:
                codec._fast_dumps = fast

        return run

    for name, doc in documents.items():
        scale = args.number * (1000 if "small" in name else 1)
        unit = "µs" if "small" in name else "ms"
        factor = 1e6 if "small" in name else 1e3
        cells: dict[str, Callable[[], Any]] = {
            "ujson alone": lambda doc=doc: codec._ujson_bytes(doc, False, None),
            "encode, ujson": with_ujson(doc),
        }
        if fast is not None:
            cells["encode, orjson"] = lambda doc=doc: codec.encode(doc)
        times: dict[str, list[float]] = {cell: [] for cell in cells}
        for _ in range(args.rounds):
            for cell, run in cells.items():
                times[cell].append(timeit.timeit(run, number=scale) / scale * factor)
        base = statistics.median(times["ujson alone"])
        shown = ", ".join(
            f"{cell} {statistics.median(values):.2f} {unit} "
            f"({statistics.median(values) / base:.2f}x)"
            for cell, values in times.items()
        )
        print(f"{name}: {shown}")


if __name__ == "__main__":
    main()
