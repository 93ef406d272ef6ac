"""The documentation site builds clean, its examples run, and the API is documented.

* ``sphinx -W -n -b html``: warnings are errors and references are nitpicky, so a
  dangling cross-reference, a link to a missing page or anchor within the site, or a
  docstring that does not parse fails the build (``docs/conf.py`` says how references to
  Python's and Tornado's objects are treated offline);
* every ```python block of every page, and every
  ``.. code-block:: python`` of the reStructuredText pages, runs the way
  ``tests/package/test_readme.py`` runs the README's: a module that serves its
  applications without a 5xx or an ERROR record, or a test module that must pass;
* every public name (``tornado_jsonservlet.__all__``) appears in an ``auto*`` directive
  of the API reference, and every public class, function and method has a docstring;
* the supported versions stated on the support page match ``setup.cfg`` and ``.ci/run``.

The build is skipped only when Sphinx is not installed and not in CI (``.[docs]``; the
``test`` extra includes it, so CI always builds).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tornado_jsonservlet
from tests.package.test_readme import run_as_module, run_as_test_module

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_MD_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_RST_BLOCK = re.compile(
    r"^\.\. code-block:: python[ \t]*\n((?:[ \t]*\n|[ \t]+.*\n)+)", re.MULTILINE
)


def doc_pages() -> list[Path]:
    return sorted(
        path
        for pattern in ("**/*.md", "**/*.rst")
        for path in DOCS.glob(pattern)
        if "_build" not in path.parts
    )


def python_blocks() -> list[tuple[str, int, str]]:
    """``(page, line, source)`` of every Python example in the pages."""
    found = []
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        name = str(page.relative_to(DOCS))
        if page.suffix == ".md":
            for match in _MD_FENCE.finditer(text):
                found.append((name, text.count("\n", 0, match.start()) + 1, match.group(1)))
        else:
            for match in _RST_BLOCK.finditer(text):
                source = match.group(1)
                indent = min(
                    len(line) - len(line.lstrip()) for line in source.splitlines() if line.strip()
                )
                dedented = "\n".join(line[indent:] for line in source.splitlines()) + "\n"
                found.append((name, text.count("\n", 0, match.start()) + 1, dedented.lstrip("\n")))
    return found


BLOCKS = python_blocks()


def test_docs_have_python_blocks() -> None:
    pages = {page for page, _, _ in BLOCKS}
    print(f"\ndocs python blocks: {len(BLOCKS)} in {len(pages)} pages")
    assert len(BLOCKS) >= 30


@pytest.mark.parametrize(
    ("page", "line", "source"),
    BLOCKS,
    ids=[f"{page}:{line}" for page, line, _ in BLOCKS],
)
def test_docs_block_runs_as_written(page: str, line: int, source: str, tmp_path: Path) -> None:
    if re.search(r"^(async )?def test_", source, re.MULTILINE):
        run_as_test_module(line, source, tmp_path)
    else:
        run_as_module(line, source, tmp_path)


def _sphinx_available() -> bool:
    try:
        import furo  # noqa: F401
        import myst_parser  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError:
        return False
    return True


SPHINX = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html"]


def build_site(out: Path, source: Path = DOCS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SPHINX, str(source), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _sphinx_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Sphinx, MyST and furo are in the test extra; CI must build the docs")
        pytest.skip("pip install '.[docs]' to build the documentation")
    out = tmp_path_factory.mktemp("html")
    result = build_site(out)
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
    assert result.stderr.strip() == "", result.stderr
    return out


def test_site_builds_clean_with_warnings_as_errors(site: Path) -> None:
    assert (site / "index.html").is_file()
    guide = sorted(p.stem for p in (site / "guide").glob("*.html"))
    recipes = sorted(p.stem for p in (site / "recipes").glob("*.html"))
    print(f"\nguide pages: {len(guide)} {guide}\nrecipes: {len(recipes)} {recipes}")
    assert len(guide) >= 11
    assert len(recipes) >= 6


def test_every_internal_link_of_the_built_site_resolves(site: Path) -> None:
    """Sphinx checks cross-references; this checks the rendered ``href``s too."""
    broken = []
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        for target in re.findall(r'href="([^"#:?]+\.html)(?:#([^"]*))?"', html):
            path, anchor = target
            resolved = (page.parent / path).resolve()
            if not resolved.is_file():
                broken.append(f"{page.relative_to(site)} -> {path}")
            elif anchor and f'id="{anchor}"' not in resolved.read_text(encoding="utf-8"):
                broken.append(f"{page.relative_to(site)} -> {path}#{anchor}")
    assert broken == []


def test_a_dangling_reference_fails_the_build(tmp_path: Path) -> None:
    """The nitpicky build can fail: a page referring to a name that does not exist."""
    if not _sphinx_available():
        pytest.skip("pip install '.[docs]' to build the documentation")
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy, ignore=shutil.ignore_patterns("_build"))
    for name in ("CHANGELOG.md", "SECURITY.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    with open(copy / "guide" / "servlets.md", "a", encoding="utf-8") as page:
        page.write("\nSee {py:class}`tornado_jsonservlet.NoSuchServlet`.\n")
    result = build_site(tmp_path / "html", source=copy)
    assert result.returncode != 0
    assert "NoSuchServlet" in result.stderr


# -- the API reference and docstrings --------------------------------------------------


def _api_directives() -> set[str]:
    names = set()
    for page in (DOCS / "api").glob("*.rst"):
        for target in re.findall(
            r"^\.\. auto(?:class|exception|function|data|module)::\s*(\S+)",
            page.read_text(encoding="utf-8"),
            re.MULTILINE,
        ):
            names.add(target.removeprefix("tornado_jsonservlet."))
    return names


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = _api_directives()
    missing = [name for name in tornado_jsonservlet.__all__ if name not in documented]
    assert missing == []


def public_objects() -> dict[str, object]:
    """Every public class and function, plus the public names of subpackages."""
    from tornado_jsonservlet import testing
    from tornado_jsonservlet.core import context
    from tornado_jsonservlet.outbound import CancellableHTTPClient
    from tornado_jsonservlet.streams.redis_broadcast import RedisBroadcaster

    found: dict[str, object] = {
        name: getattr(tornado_jsonservlet, name) for name in tornado_jsonservlet.__all__
    }
    found["outbound.CancellableHTTPClient"] = CancellableHTTPClient
    found["streams.redis_broadcast.RedisBroadcaster"] = RedisBroadcaster
    found.update({f"testing.{name}": getattr(testing, name) for name in testing.__all__})
    found["core.context.deadline_remaining"] = context.deadline_remaining
    found["core.context.loop_time"] = context.loop_time
    return {
        name: obj for name, obj in found.items() if inspect.isclass(obj) or inspect.isfunction(obj)
    }


def undocumented() -> tuple[int, list[str]]:
    """``(how many public callables, the ones without a docstring)``.

    A class counts with each public method and property it or a toolkit base class
    defines (Tornado's own are Tornado's to document).
    """
    total, missing = 0, []
    for name, obj in public_objects().items():
        total += 1
        if not (inspect.getdoc(obj) or "").strip() or (
            inspect.isclass(obj) and "__doc__" not in vars(obj)
        ):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("tornado_jsonservlet"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if not (inspect.isfunction(value) or isinstance(value, property)):
                    continue
                total += 1
                if not (value.__doc__ or "").strip():
                    missing.append(f"{klass.__module__}.{klass.__qualname__}.{attr}")
    return total, sorted(set(missing))


def test_every_public_class_function_and_method_has_a_docstring() -> None:
    total, missing = undocumented()
    print(f"\npublic classes, functions and methods checked: {total}; undocumented: {len(missing)}")
    assert missing == []


def test_public_names_say_when_they_were_added() -> None:
    missing = [
        name
        for name, obj in public_objects().items()
        if ".. versionadded::" not in (obj.__doc__ or "")
    ]
    assert missing == []


def test_no_benchmark_figures_in_docstrings_or_comments() -> None:
    """Figures go stale: they live on the performance page, produced by commands."""
    # A measurement, not a setting: a speed-up, a rate, a percentile, or a duration
    # that something "costs" or "takes". Defaults ("20 ms by default") are settings.
    figure = re.compile(
        r"\d(?:\.\d+)?\s*\u00d7|\bx faster|\b(?:req|requests|responses)/s\b|\bp(?:50|90|99)\b"
        r"|(?:about|costs?|took|takes)\s+(?:about\s+)?\d+(?:\.\d+)?\s*(?:ms|µs|us|ns)\b",
        re.IGNORECASE,
    )
    found = []
    for path in sorted((ROOT / "tornado_jsonservlet").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if figure.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


# -- supported versions: stated once, everywhere the same -------------------------------


def test_supported_versions_agree_with_setup_cfg_and_ci() -> None:
    support = (DOCS / "support.md").read_text(encoding="utf-8")
    statement = re.search(
        "Python (3\\.\\d+)\u2013(3\\.\\d+), Tornado (6\\.\\d+)\u2013(6\\.\\d+)", support
    )
    assert statement, "docs/support.md states the supported versions"
    py_low, py_high, tornado_low, tornado_high = statement.groups()
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert f"python_requires = >={py_low}" in setup
    classifiers = re.findall(r"Programming Language :: Python :: (3\.\d+)", setup)
    low_minor, high_minor = int(py_low.split(".")[1]), int(py_high.split(".")[1])
    assert classifiers == [f"3.{minor}" for minor in range(low_minor, high_minor + 1)]
    next_minor = f"6.{int(tornado_high.split('.')[1]) + 1}"
    assert f"tornado>={tornado_low},<{next_minor}" in setup
    ci_script = ROOT / ".ci" / "run"
    if ci_script.exists():  # a git checkout; the sdist does not carry CI's script
        ci = ci_script.read_text(encoding="utf-8")
        supported = re.search(r'SUPPORTED="([^"]+)"', ci)
        assert supported
        assert supported.group(1).split() == [
            f"3.{minor}" for minor in range(high_minor, low_minor - 1, -1)
        ]
        assert f"'tornado>={tornado_low},<" in ci  # the oldest Tornado is tested
    assert statement.group(0) in (ROOT / "README.md").read_text(encoding="utf-8")
