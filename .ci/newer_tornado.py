"""Print the newest Tornado on the package index that setup.cfg's bound excludes.

``setup.cfg`` bounds Tornado below the next minor (``tornado>=6.4,<6.7``). When the
index has a release or pre-release at or above that bound, ``.ci/run`` tests the
toolkit against it too, so a coming break shows in CI before users meet it. Prints
nothing when there is none, or when the index cannot be asked.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


def tornado_requirement() -> SpecifierSet:
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    for line in config["options"]["install_requires"].splitlines():
        match = re.fullmatch(r"\s*tornado\s*(.*)", line)
        if match:
            return SpecifierSet(match.group(1))
    raise SystemExit("setup.cfg names no tornado requirement")


def published_versions() -> list[Version]:
    answer = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "tornado", "--pre"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Available versions: (.*)", answer.stdout)
    versions = []
    for text in match.group(1).split(", ") if match else ():
        try:
            versions.append(Version(text.strip()))
        except InvalidVersion:
            continue
    return versions


def main() -> None:
    # An explicit specifier (``.ci/newer_tornado.py '>=6.4,<6.6'``) checks the script.
    allowed = SpecifierSet(sys.argv[1]) if len(sys.argv) > 1 else tornado_requirement()
    versions = published_versions()
    inside = [v for v in versions if allowed.contains(v, prereleases=True)]
    newest_inside = max(inside, default=None)
    beyond = [v for v in versions if newest_inside is None or v > newest_inside]
    if beyond:
        print(max(beyond))


if __name__ == "__main__":
    main()
