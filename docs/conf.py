"""Sphinx configuration for the tornado-jsonservlet documentation.

Build it (``pip install '.[docs]'``)::

    python -m sphinx -W -n -b html docs docs/_build/html

and open ``docs/_build/html/index.html``: the site works offline.

Why Sphinx: Tornado documents itself with Sphinx, so its users know the layout, and
autodoc reads the docstrings, which already use Sphinx roles. MyST lets the guide be
written in Markdown, the README's language, and its ```python blocks are run by
``tests/package/test_docs.py`` exactly as the README's are. Furo is a maintained theme
from PyPI with a readable API page and no JavaScript framework.

**References to Python and Tornado.** The build runs with ``nitpicky`` and ``-W``: every
cross-reference must resolve, so a renamed class or a typo fails the build. Intersphinx
would resolve references to Python's and Tornado's objects, but it downloads their
``objects.inv`` inventories, and the machines this project is built on reach nothing but
package registries. So:

* when ``TJS_INTERSPHINX=1`` is set (a machine with internet access), intersphinx is
  configured for Python and Tornado and those references become links;
* otherwise, references whose target lives in the standard library, in Tornado, jinja2,
  redis, asyncpg or prometheus_client are accepted as unresolved text by
  ``nitpick_ignore_regex`` (rendered as code, not links). Nothing is vendored.

Every other unresolved reference, in particular any ``tornado_jsonservlet`` name, still
fails the build. References to a public name through its defining module
(``tornado_jsonservlet.errors.exceptions.NotFound``) are resolved to the page that
documents it under its public path (``tornado_jsonservlet.NotFound``) by
``_resolve_public_alias`` below.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tornado_jsonservlet  # noqa: E402

project = "tornado-jsonservlet"
author = "tornado-jsonservlet contributors"
copyright = "2026, tornado-jsonservlet contributors"
release = tornado_jsonservlet.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"tornado-jsonservlet {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types for the parameters a docstring describes; no "Return type: None" on constructors.
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False

nitpicky = True

if os.environ.get("TJS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "tornado": ("https://www.tornadoweb.org/en/stable", None),
    }
else:
    intersphinx_mapping = {}

_EXTERNAL_PACKAGES = {
    "tornado",
    "jinja2",
    "redis",
    "asyncpg",
    "prometheus_client",
    "ujson",
    "orjson",
}


def _stdlib_names() -> set[str]:
    """Top-level names of the standard library (C modules such as ``_asyncio`` too)."""
    names = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    if not names - set(sys.builtin_module_names):  # Python 3.9: list the stdlib directory
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        names |= {path.name.removesuffix(".py") for path in stdlib.iterdir()}
        dynload = stdlib / "lib-dynload"
        if dynload.is_dir():
            names |= {path.name.split(".")[0] for path in dynload.iterdir()}
    return {name for name in names if name.isidentifier()} | {"_asyncio", "_thread"}


_external = sorted(_stdlib_names() | _EXTERNAL_PACKAGES | {"typing_extensions"})
_builtin_names = sorted(name for name in dir(builtins) if not name.startswith("_"))
nitpick_ignore_regex = [
    # Standard library and the third-party packages named above, by dotted path.
    (r"py:.*", "({})(\\..+)?".format("|".join(map(re.escape, _external)))),
    # Builtins (int, str, Exception, BaseException, ...), also ``None``/``Ellipsis``.
    (r"py:.*", "({})".format("|".join(_builtin_names))),
    # Tornado classes that signatures name without their module (imported by name).
    (
        r"py:.*",
        r"(Application|AsyncHTTPClient|HTTPRequest|HTTPResponse|HTTPServerRequest|"
        r"IOStream|RequestHandler|StreamClosedError|URLSpec)",
    ),
    # Standard-library names that older Sphinx versions render without their module,
    # and the toolkit's type aliases (``CancelPolicy``, ``ErrorHandler``), which are
    # spelled out where they are used.
    (r"py:.*", r"(ContextVar|CancelPolicy|ErrorHandler)"),
    # Private names (a leading underscore: type variables, internal bases) and the
    # adapter module, which is Tornado's private API in one place: not documented on
    # purpose, so not a dangling reference.
    (r"py:.*", r"tornado_jsonservlet(\.\w+)*\._\w+"),
    (r"py:.*", r"tornado_jsonservlet\.tornado_adapter\..+"),
]


def _resolve_public_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``tornado_jsonservlet.<family>.<module>.Name`` to ``tornado_jsonservlet.Name``.

    The API reference documents each public name once, under the path users import it
    from. Docstrings and signatures refer to the defining module; this sends those
    references to the public entry instead of failing the nitpicky build.
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node.get("reftarget", "")
    if target.split(".")[0] in tornado_jsonservlet.__all__:
        target = f"tornado_jsonservlet.{target}"  # a bare public name, e.g. ServletError
    if not target.startswith("tornado_jsonservlet."):
        return None
    parts = target.split(".")
    public = set(tornado_jsonservlet.__all__)
    for i, part in enumerate(parts[1:], start=1):
        if part in public:
            alias = ".".join(["tornado_jsonservlet", *parts[i:]])
            if alias == node.get("reftarget"):
                return None
            domain = env.get_domain("py")
            builder = app.builder
            for role in ("class", "func", "meth", "attr", "exc", "obj", "data"):
                node_copy = node.deepcopy()
                node_copy["reftarget"] = alias
                resolved = domain.resolve_xref(
                    env, node["refdoc"], builder, role, alias, node_copy, contnode
                )
                if resolved is not None:
                    return resolved
            return None
    return None


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Show a private base class (``_DefaultStatusError``) as its nearest public ancestor."""
    for i, base in enumerate(bases):
        if isinstance(base, type) and base.__name__.startswith("_"):
            public = next((b for b in base.__mro__[1:] if not b.__name__.startswith("_")), object)
            bases[i] = public
    bases[:] = list(dict.fromkeys(bases))


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_public_alias)
    app.connect("autodoc-process-bases", _public_bases)
