#!/usr/bin/env bash
# Build the documentation site and screenshot its front page and one API page with
# headless Chromium, to check how the site looks without a browser at hand:
#
#     bash docs/screenshot.sh            # PNGs in docs/_build/screenshots/
#
# Needs the docs extra (pip install '.[docs]') and chromium (Debian: apt-get install
# chromium). PYTHON names the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
html=docs/_build/html
shots=docs/_build/screenshots
"$python" -m sphinx -W -n -q -b html docs "$html"
mkdir -p "$shots"
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome)
for page in index api/errors; do
    out="$shots/$(echo "$page" | tr / -).png"
    # --no-sandbox: CI and containers run as root, where Chromium's sandbox cannot start.
    "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size=1280,1600 --screenshot="$PWD/$out" "file://$PWD/$html/$page.html" \
        >/dev/null 2>&1
    echo "$out"
done
