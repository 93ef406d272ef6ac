"""Every ```python block in README.md runs as written.

Each block is written to a file of its own in a temporary directory and run in
a fresh interpreter, so blocks share nothing and import the installed package:

* a block that defines ``test_`` functions is a test module: it is run with
  pytest under the runner its marker names (``gen_test``: pytest-tornado,
  ``asyncio``: pytest-asyncio) with the other runner disabled, and must pass;
* any other block is executed as a module; every ``tornado.web.Application`` it
  leaves in its namespace is then served on 127.0.0.1 and sent a GET for each
  of its literal paths (rules without parameters): no answer may be a 5xx, and
  no ERROR may be logged. A response still streaming after 3 s (server-sent
  events) is judged by its status line.

Blocks are found by parsing the file, so new blocks are picked up as they are
added. The number of blocks run is printed (``-s``) for the record.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """``(line number, source)`` of each ```python block in the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


BLOCKS = python_blocks()

# Runs in the child interpreter: execute the block, then exercise its applications.
RUNNER = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    import tornado.httpclient, tornado.httpserver, tornado.netutil, tornado.web
    from tornado.routing import PathMatches

    errors = []

    class Errors(logging.Handler):
        def emit(self, record):
            errors.append(f"{record.name}: {record.getMessage()}")

    logging.getLogger().addHandler(Errors(level=logging.ERROR))
    path = sys.argv[1]
    namespace = {"__name__": "readme_example", "__file__": path}
    exec(compile(open(path, encoding="utf-8").read(), path, "exec"), namespace)
    apps = [v for v in namespace.values() if isinstance(v, tornado.web.Application)]

    def literal_paths(app):
        for rule in app.wildcard_router.rules:
            if isinstance(rule.matcher, PathMatches):
                try:
                    yield rule.matcher.reverse()
                except (AssertionError, ValueError):
                    pass  # a rule with parameters: nothing sensible to request

    async def exercise():
        results = []
        client = tornado.httpclient.AsyncHTTPClient()
        for app in apps:
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server = tornado.httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            port = sockets[0].getsockname()[1]
            try:
                for path in dict.fromkeys(p for p in literal_paths(app) if p):
                    # A stream (server-sent events) never ends: its status line counts.
                    status = []
                    def on_header(line, status=status):
                        if line.startswith("HTTP/") and not status:
                            status.append(int(line.split()[1]))
                    try:
                        response = await client.fetch(
                            f"http://127.0.0.1:{port}{path}", raise_error=False,
                            request_timeout=3, header_callback=on_header,
                            streaming_callback=lambda chunk: None,
                        )
                        results.append([path, response.code])
                    except tornado.httpclient.HTTPClientError:
                        if not status:
                            raise
                        results.append([path, status[0]])
            finally:
                server.stop()
                await server.close_all_connections()
        return results

    results = asyncio.run(exercise())
    print(json.dumps({"apps": len(apps), "requests": results, "errors": errors}))
    """
)

PYTEST_INI = textwrap.dedent(
    """
    [pytest]
    asyncio_default_fixture_loop_scope = function
    """
)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_readme_has_python_blocks():
    print(f"\nREADME python blocks: {len(BLOCKS)}")
    # The README is short (the guide in docs/ holds the long examples): at least the
    # 30-second example and one more.
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs_as_written(line: int, source: str, tmp_path: Path):
    if re.search(r"^(async )?def test_", source, re.MULTILINE):
        run_as_test_module(line, source, tmp_path)
    else:
        run_as_module(line, source, tmp_path)


def run_as_module(line: int, source: str, tmp_path: Path) -> None:
    block = tmp_path / f"readme_line{line}.py"
    block.write_text(source, encoding="utf-8")
    result = run(["-c", RUNNER, str(block)], cwd=tmp_path)
    assert result.returncode == 0, f"README line {line}:\n{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == [], f"README line {line} logged errors: {report['errors']}"
    for path, code in report["requests"]:
        assert code < 500, f"README line {line}: GET {path} answered {code}"


def run_as_test_module(line: int, source: str, tmp_path: Path) -> None:
    uses_tornado = "pytest.mark.gen_test" in source
    uses_asyncio = "pytest.mark.asyncio" in source
    assert uses_tornado != uses_asyncio, (
        f"README line {line}: a test block marks its tests for exactly one runner"
    )
    (tmp_path / "pytest.ini").write_text(PYTEST_INI)
    (tmp_path / f"test_readme_line{line}.py").write_text(source, encoding="utf-8")
    disabled = "asyncio" if uses_tornado else "tornado"
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", f"no:{disabled}"], tmp_path)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"README line {line}:\n{result.stdout}\n{result.stderr}"
    assert re.search(r"\b\d+ passed\b", summary), summary
    assert not re.search(r"failed|error|skipped", summary), summary


def test_readme_links_are_absolute():
    """The README is the package index's long description: relative links break there."""
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert relative == []


_OWN = "https://github.com/tornado-jsonservlet/tornado-jsonservlet/"


def test_readme_links_into_the_repository_resolve():
    """Each link to this repository names a file or folder that exists, and an anchor
    into a guide page names one of its headings."""
    text = README.read_text(encoding="utf-8")
    root = README.parent
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if t.startswith(_OWN)]
    assert targets, "the README links into the guide"
    broken = []
    for target in targets:
        where = re.fullmatch(_OWN + r"(?:blob|tree)/main/([^#]+)(?:#(.+))?", target)
        if where is None or not (root / where.group(1)).exists():
            broken.append(target)
            continue
        anchor = where.group(2)
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (root / where.group(1)).read_text("utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            if anchor not in slugs:
                broken.append(target)
    assert broken == []


@pytest.mark.parametrize(
    ("case", "source"),
    [
        ("undefined name", "import tornado.web\n\nrows = db.fetch()\n"),
        (
            "a 500",
            "import tornado.web\n\n\nclass Broken(tornado.web.RequestHandler):\n"
            "    def get(self):\n        raise RuntimeError('bug')\n\n\n"
            "app = tornado.web.Application([(r'/broken', Broken)])\n",
        ),
    ],
)
def test_a_broken_block_fails(case: str, source: str, tmp_path: Path):
    """The checks above can fail: a placeholder, and an example answering 500."""
    with pytest.raises(AssertionError):
        run_as_module(0, source, tmp_path)
