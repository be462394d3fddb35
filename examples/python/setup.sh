#!/usr/bin/env bash
# Installs the Python client example's pinned dependencies (requirements.txt:
# grpcio, grpcio-tools and what they need) into examples/python/.venv, once: again only
# when requirements.txt changed. deploy/dev/test.sh runs it (the test suite runs
# the example); run it yourself before `examples/python/.venv/bin/python
# examples/python/client.py`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
log() { printf '[python-example] %s\n' "$*" >&2; }

if [ -f "$VENV/installed.txt" ] && cmp -s "$HERE/requirements.txt" "$VENV/installed.txt"; then
    exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
log "installing $(grep -v '^#' "$HERE/requirements.txt" | xargs) into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
cp "$HERE/requirements.txt" "$VENV/installed.txt"
