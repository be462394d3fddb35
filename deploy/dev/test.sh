#!/usr/bin/env bash
# The whole test suite: brings up the services the tests need (PostgreSQL,
# Garage, moto, a streaming replica) and the Python client example's pinned
# dependencies (examples/python/setup.sh: the suite runs the example), then runs
# every test with cargo-nextest. Extra arguments go to nextest.
# Usage: deploy/dev/test.sh [nextest filters...]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

bash "$HERE/stack.sh"
# The streaming replica the dashboards-from-a-replica test reads through.
bash "$HERE/stack.sh" replica
# shellcheck disable=SC1091
source "${PRESIGND_DEV_STATE:-$HERE/.state}/env"
bash "$REPO/examples/python/setup.sh"

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "[test] installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi
cd "$REPO"
exec cargo nextest run --no-fail-fast "$@"
