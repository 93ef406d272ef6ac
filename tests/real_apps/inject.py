"""Run a real Tornado application's own pytest suite with the toolkit's mixins injected.

Two roles in one file:

* **pytest plugin** (loaded as ``-p jsonservlet_inject``; the runner below puts a
  link of this file under that name on ``PYTHONPATH``). With
  ``JSONSERVLET_INJECT`` set it defines ::

      class Injected(RequestIdMixin, CancelOnDisconnectMixin, RequestHandler): ...

  (``CancelOnDisconnectMixin`` includes ``SafeWriteMixin``) and, while a module of
  the application or of its tests is being *executed* by the import system,
  rebinds ``tornado.web.RequestHandler`` to it, so every handler class those
  modules define at import inherits the mixins first. The original is put back
  after each such module: ``tornado.web`` itself checks ``issubclass(x,
  RequestHandler)`` against its module global, which a permanent rebinding would
  break for Tornado's own handlers (``StaticFileHandler``...). A handler class an
  application module defines later, at run time, directly on ``RequestHandler``
  (terminado's tests build one inside ``get_app``), gets ``Injected`` put in place
  of ``RequestHandler`` in its ``__bases__``. With ``JSONSERVLET_INJECT=websocket``
  ``tornado.websocket`` is also imported under the rebinding, so
  ``WebSocketHandler`` -- and every app handler built on it -- carries the mixins.
  Without ``JSONSERVLET_INJECT`` nothing is changed; in both cases the plugin
  counts WARNING/ERROR log records per test and writes them, with the list of
  handler classes seen and whether they carry the mixins, to
  ``JSONSERVLET_INJECT_REPORT``.

* **runner** (``python inject.py``): runs the suite twice, plain and injected, each
  in its own pytest process with ``--junitxml``, and compares the outcome of every
  test id and its ERROR log records. Exit status 1 when anything differs::

      python tests/real_apps/inject.py --cwd SUITE_DIR --targets flower,tests \\
          [--websocket] [--python VENV/bin/python] [-- PYTEST_ARGS...]

Not collected by pytest: no file in this folder starts with ``test_``.
"""

from __future__ import annotations

import importlib.abc
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from typing import Any

MODE_ENV = "JSONSERVLET_INJECT"  # "", "app" or "websocket"
TARGETS_ENV = "JSONSERVLET_INJECT_TARGETS"  # comma-separated top-level module names
REPORT_ENV = "JSONSERVLET_INJECT_REPORT"  # JSON file the plugin writes at the end
PLUGIN_NAME = "jsonservlet_inject"


# --------------------------------------------------------------------------- plugin


class _LogCounter(logging.Handler):
    """Counts WARNING+ records per test id (and keeps the ERROR+ messages)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.current = "<outside tests>"
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[self.current][f"{record.levelname}:{record.name}"] += 1
        if record.levelno >= logging.ERROR:
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            exc = record.exc_info[1] if record.exc_info else None
            first = message.splitlines()[0] if message else ""
            detail = f" [{type(exc).__name__}: {exc}]" if exc else ""
            self.errors[self.current].append(f"{record.name}: {first}{detail}"[:400])


class _InjectingLoader(importlib.abc.Loader):
    """Wraps a target module's loader: its code runs with the rebinding in force."""

    def __init__(self, inner: Any, injector: _Injector) -> None:
        self._inner = inner
        self._injector = injector

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_data, ...
        return getattr(self._inner, name)

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with self._injector.rebound():
            self._inner.exec_module(module)


class _Injector(importlib.abc.MetaPathFinder):
    def __init__(self, mode: str, targets: set[str]) -> None:
        import tornado.web

        from tornado_jsonservlet import CancelOnDisconnectMixin, RequestIdMixin

        self.mode = mode
        self.targets = targets
        self.original = original = tornado.web.RequestHandler
        self.depth = 0
        self.seen: list[dict[str, Any]] = []
        injector = self

        self.requests = Counter()  # proof that the mixins take part in the requests

        class Injected(RequestIdMixin, CancelOnDisconnectMixin, original):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                injector.requests["handlers created"] += 1

            def finish(self, *args: Any, **kwargs: Any) -> Any:
                if not self._finished:
                    injector.requests["finish() called"] += 1
                    if "X-Request-ID" in self._headers:
                        injector.requests["... with X-Request-ID set"] += 1
                return super().finish(*args, **kwargs)

        Injected.__module__ = __name__
        self.injected = Injected

        def watch(cls: type, **kwargs: Any) -> None:  # RequestHandler.__init_subclass__
            super(original, cls).__init_subclass__(**kwargs)  # type: ignore[misc]
            injector._class_created(cls)

        original.__init_subclass__ = classmethod(watch)  # type: ignore[assignment,method-assign]

    # A module counts as the app's when its top-level package is a target.
    def _is_target(self, module_name: str) -> bool:
        return module_name.split(".")[0] in self.targets

    def _class_created(self, cls: type) -> None:
        if cls is self.injected:
            return
        swapped = False
        if self.depth == 0 and self.original in cls.__bases__ and self._is_target(cls.__module__):
            # Defined at run time on the real RequestHandler: put the mixins in.
            cls.__bases__ = tuple(
                self.injected if base is self.original else base for base in cls.__bases__
            )
            swapped = True
        self.seen.append(
            {
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "injected": issubclass(cls, self.injected),
                "bases_swapped_at_runtime": swapped,
            }
        )

    class _Rebound:
        def __init__(self, injector: _Injector) -> None:
            self.injector = injector

        def __enter__(self) -> None:
            import tornado.web

            self.injector.depth += 1
            tornado.web.RequestHandler = self.injector.injected  # type: ignore[misc]

        def __exit__(self, *exc: object) -> None:
            import tornado.web

            self.injector.depth -= 1
            if self.injector.depth == 0:
                tornado.web.RequestHandler = self.injector.original  # type: ignore[misc]

    def rebound(self) -> _Injector._Rebound:
        return self._Rebound(self)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not self._is_target(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _InjectingLoader(spec.loader, self)
                return spec
        return None

    def install(self) -> None:
        already = sorted(m for m in sys.modules if self._is_target(m))
        if already:
            raise RuntimeError(f"{PLUGIN_NAME}: imported before the hook: {already}")
        # Tornado's other modules are imported plainly first, so an app module that
        # imports one of them does not re-create Tornado's classes on Injected.
        import tornado.auth
        import tornado.testing

        if self.mode == "websocket":
            if "tornado.websocket" in sys.modules:
                raise RuntimeError(f"{PLUGIN_NAME}: tornado.websocket imported too early")
            with self.rebound():
                import tornado.websocket
            assert issubclass(tornado.websocket.WebSocketHandler, self.injected)
        else:
            import tornado.websocket
        sys.meta_path.insert(0, self)


_counter = _LogCounter()
_injector: _Injector | None = None


def _plugin_setup() -> None:
    global _injector
    logging.getLogger().addHandler(_counter)
    mode = os.environ.get(MODE_ENV, "")
    if mode:
        if mode not in ("app", "websocket"):
            raise RuntimeError(f"{MODE_ENV} must be empty, 'app' or 'websocket', not {mode!r}")
        targets = {t for t in os.environ.get(TARGETS_ENV, "").split(",") if t}
        if not targets:
            raise RuntimeError(f"{TARGETS_ENV} must name the app's top-level modules")
        _injector = _Injector(mode, targets)
        _injector.install()


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _counter.current = nodeid


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _counter.current = "<outside tests>"


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    report = {
        "mode": os.environ.get(MODE_ENV, ""),
        "log_counts": {k: dict(v) for k, v in _counter.counts.items()},
        "errors": dict(_counter.errors),
        "handler_classes": _injector.seen if _injector else [],
        "requests": dict(_injector.requests) if _injector else {},
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)


if __name__ != "__main__":
    _plugin_setup()


# --------------------------------------------------------------------------- runner


def _outcomes(junit_path: str) -> dict[str, str]:
    """``{test id: outcome}`` from a JUnit XML file (setup/teardown errors appended)."""
    import xml.etree.ElementTree as ET

    result: dict[str, str] = {}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = "+".join(kinds) if kinds else "passed"
        if test_id in result:
            outcome = f"{result[test_id]}+{outcome}"
        result[test_id] = outcome
    return result


def _summary(outcomes: dict[str, str]) -> str:
    tally = Counter(outcomes.values())
    return ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))


def _run(args: Any, mode: str, workdir: str, extra: list[str]) -> tuple[int, dict, dict, str]:
    import subprocess

    junit = os.path.join(workdir, f"junit-{mode or 'plain'}.xml")
    report = os.path.join(workdir, f"report-{mode or 'plain'}.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (workdir, env.get("PYTHONPATH", "")) if p)
    env[MODE_ENV] = mode
    env[TARGETS_ENV] = args.targets
    env[REPORT_ENV] = report
    command = [
        args.python, "-m", "pytest", "-p", PLUGIN_NAME, "-p", "no:cacheprovider",
        f"--junitxml={junit}", "-q", *extra,
    ]  # fmt: skip
    print(f"$ (cd {args.cwd} && {MODE_ENV}={mode} {TARGETS_ENV}={args.targets} "
          f"PYTHONPATH={workdir} {' '.join(command)})", flush=True)  # fmt: skip
    done = subprocess.run(command, cwd=args.cwd, env=env, capture_output=True, text=True)
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    with open(report) as f:
        plugin_report = json.load(f)
    return done.returncode, _outcomes(junit), plugin_report, tail


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cwd", required=True, help="folder to run pytest in (the suite's)")
    parser.add_argument("--targets", required=True, help="app's top-level modules, a,b,c")
    parser.add_argument("--websocket", action="store_true", help="inject into WebSocketHandler")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the app's venv")
    parser.add_argument("--keep", help="folder to keep the JUnit XML and reports in")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)

    workdir = args.keep or tempfile.mkdtemp(prefix="jsonservlet-inject-")
    os.makedirs(workdir, exist_ok=True)
    link = os.path.join(workdir, PLUGIN_NAME + ".py")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(__file__), link)

    runs = {}
    for mode in ("", "websocket" if args.websocket else "app"):
        runs[mode or "plain"] = _run(args, mode, workdir, args.pytest_args)
    (code_p, plain, rep_p, tail_p), (code_i, injected, rep_i, tail_i) = runs.values()
    label = "injected" + (" (incl. WebSocketHandler)" if args.websocket else "")
    print(f"plain:    exit {code_p}: {_summary(plain)}  | {tail_p.splitlines()[-1]}")
    print(f"{label}: exit {code_i}: {_summary(injected)}  | {tail_i.splitlines()[-1]}")

    handlers = rep_i["handler_classes"]
    carrying = sorted({h["class"] for h in handlers if h["injected"]})
    not_carrying = sorted({h["class"] for h in handlers if not h["injected"]})
    swapped = sorted({h["class"] for h in handlers if h["bases_swapped_at_runtime"]})
    print(f"handler classes with the mixins ({len(carrying)}): {carrying}")
    print(f"  of which given Injected at run time: {swapped}")
    print(f"handler classes without them ({len(not_carrying)}): {not_carrying}")
    print(f"injected run: {rep_i['requests']}")

    differences = 0
    for test_id in sorted(set(plain) | set(injected)):
        a, b = plain.get(test_id, "absent"), injected.get(test_id, "absent")
        if a != b:
            differences += 1
            print(f"OUTCOME DIFFERS {test_id}: plain={a} injected={b}")
    errors_p, errors_i = rep_p["errors"], rep_i["errors"]

    def n_errors(report: dict) -> int:
        return sum(
            n for counts in report["log_counts"].values()
            for key, n in counts.items() if not key.startswith("WARNING:")
        )  # fmt: skip

    def n_warnings(report: dict) -> int:
        return sum(
            n for counts in report["log_counts"].values()
            for key, n in counts.items() if key.startswith("WARNING:")
        )  # fmt: skip

    print(f"ERROR+ log records: plain {n_errors(rep_p)}, injected {n_errors(rep_i)}; "
          f"WARNING records: plain {n_warnings(rep_p)}, injected {n_warnings(rep_i)}")  # fmt: skip
    for test_id in sorted(set(errors_p) | set(errors_i)):
        a, b = sorted(errors_p.get(test_id, [])), sorted(errors_i.get(test_id, []))
        if [_strip(x) for x in a] != [_strip(x) for x in b]:
            differences += 1
            print(f"ERROR LOGS DIFFER {test_id}:\n  plain:    {a}\n  injected: {b}")
    counts_p, counts_i = rep_p["log_counts"], rep_i["log_counts"]
    for test_id in sorted(set(counts_p) | set(counts_i)):
        a, b = counts_p.get(test_id, {}), counts_i.get(test_id, {})
        if a != b:
            print(f"log counts differ (informational) {test_id}: plain={a} injected={b}")
    print(f"{differences} difference(s); files in {workdir}")
    return 1 if differences else 0


def _strip(message: str) -> str:
    """An ERROR message without what changes from run to run (addresses, ports, ids)."""
    import re

    message = re.sub(r"0x[0-9a-f]+", "0x?", message)
    message = re.sub(r"127\.0\.0\.1:\d+|localhost:\d+|\(\d+\)", "?", message)
    return re.sub(r"\b\d+\.\d+(ms|s)\b", "?", message)


if __name__ == "__main__":
    sys.exit(main())
