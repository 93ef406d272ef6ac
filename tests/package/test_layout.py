"""The package's layout: layers, the one Tornado adapter, and the old module paths."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tornado_jsonservlet
from tornado_jsonservlet._moved import MOVED_MODULES

PACKAGE = Path(tornado_jsonservlet.__file__).parent

#: Lowest first: a module may import from its own layer and the layers before it.
#: The JSON codec sits below the error layer, which encodes error bodies with it;
#: the rest of the JSON family (bodies and responses raise the error classes) above.
LAYERS = [
    "tornado_adapter",
    "core",
    "jsonio.codec",
    "errors",
    "jsonio",
    "production",
    "outbound",
    "routing",
    "streams",
    "testing",
]


def _layer_of(module: str) -> int:
    below_package = module.split(".", 1)[1]
    matches = [
        layer for layer in LAYERS if below_package == layer or below_package.startswith(layer + ".")
    ]
    assert matches, f"{module} is in no layer"
    return LAYERS.index(max(matches, key=len))  # the most specific layer


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] in ("__init__", "_moved"):
            continue
        name = ".".join(("tornado_jsonservlet", *parts)).removesuffix(".__init__")
        found.append((name, path))
    return found


def _toolkit_imports(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tornado_jsonservlet":
                imported.update(f"tornado_jsonservlet.{alias.name}" for alias in node.names)
            elif node.module.startswith("tornado_jsonservlet."):
                imported.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package imports absolutely")
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("tornado_jsonservlet."))
    return imported


def test_every_module_belongs_to_a_layer() -> None:
    for name, _ in _modules():
        assert _layer_of(name) >= 0, name


@pytest.mark.parametrize(("name", "path"), _modules(), ids=lambda v: str(v))
def test_no_module_imports_a_layer_above_its_own(name: str, path: Path) -> None:
    for imported in _toolkit_imports(path):
        assert _layer_of(imported) <= _layer_of(name), f"{name} imports {imported}"


def test_the_core_imports_nothing_above_it() -> None:
    for name, path in _modules():
        if name.startswith("tornado_jsonservlet.core"):
            above = [m for m in _toolkit_imports(path) if _layer_of(m) > LAYERS.index("core")]
            assert not above, f"{name} imports {above}"


# Tornado's private names the toolkit used before the adapter existed.
_TORNADO_PRIVATE = re.compile(
    r"\._(execute|log|finished|headers_written|request_summary|transforms|prepared_future|"
    r"body_future|has_stream_request_body|connection_class|create_stream|reason|headers|"
    r"write_buffer|status_code|fut_waiter)\b|\b_HTTPConnection\b"
)


def test_only_the_adapter_touches_tornado_private_api() -> None:
    offenders = []
    for name, path in _modules():
        if name == "tornado_jsonservlet.tornado_adapter":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _TORNADO_PRIVATE.search(code) and "``" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_an_old_module_path_warns_and_is_the_new_module(old: str) -> None:
    code = (
        "import warnings, importlib\n"
        "warnings.simplefilter('error')\n"
        "import tornado_jsonservlet\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        f"    old = importlib.import_module('tornado_jsonservlet.{old}')\n"
        f"new = importlib.import_module('tornado_jsonservlet.{MOVED_MODULES[old]}')\n"
        "assert old is new, (old, new)\n"
        "assert len(caught) == 1 and caught[0].category is DeprecationWarning, caught\n"
        f"assert 'tornado_jsonservlet.{MOVED_MODULES[old]}' in str(caught[0].message)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "statement",
    [
        "from tornado_jsonservlet.outbound import CancellableHTTPClient",
        "from tornado_jsonservlet.errors import ServletError, NotFound",
        "from tornado_jsonservlet.jsonio import encode, decode, JSON_CONTENT_TYPE",
        "from tornado_jsonservlet.testing import RawHTTPConnection",
        "import tornado.httpclient as c; "
        "c.AsyncHTTPClient.configure('tornado_jsonservlet.outbound.CancellableHTTPClient')",
    ],
)
def test_family_paths_that_kept_their_name_do_not_warn(statement: str) -> None:
    code = f"import warnings\nwarnings.simplefilter('error')\n{statement}\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_pytest_plugin_entry_point_loads_without_a_warning() -> None:
    found = importlib.metadata.entry_points()
    # Python 3.9 returns a dict of groups; 3.10+ has select().
    group = found.select(group="pytest11") if hasattr(found, "select") else found["pytest11"]
    points = [ep for ep in group if ep.name == "tornado_jsonservlet"]
    assert {ep.value for ep in points} == {"tornado_jsonservlet.testing.pytest_plugin"}


def test_top_level_exports_resolve() -> None:
    for name in tornado_jsonservlet.__all__:
        assert getattr(tornado_jsonservlet, name) is not None, name
    module = importlib.import_module("tornado_jsonservlet")
    assert "Coalescer" in module.__all__


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "tornado_jsonservlet"
            ):
                offenders += [
                    f"{name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and alias.name != "__all__"
                ]
    assert not offenders, offenders
