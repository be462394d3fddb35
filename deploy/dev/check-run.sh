#!/usr/bin/env bash
# Checks that the README's run command serves a link whatever the dev state went
# through (issue: "the dev stack keeps one consistent state"). CI runs it.
#   1. a run on the current state;
#   2. the state removed (what `git clean -xdf` does) with its services still
#      running: the next run must stop them knowingly and serve a link;
#   3. a second checkout's state (another PRESIGND_DEV_STATE) on the same machine;
#   4. back to the first state, its services replaced meanwhile;
#   5. everything stopped, the state removed: a run from nothing.
# Every run must print the demo object fetched through its GET link.
# Usage: deploy/dev/check-run.sh   (honours PRESIGND_DEV_STATE and the ports of stack.sh)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${PRESIGND_DEV_STATE:-$HERE/.state}"
OTHER="$(mktemp -d)/state"
log() { printf '[check-run] %s\n' "$*" >&2; }

serves_a_link() {
    local what=$1 out
    log "$what"
    if ! out="$(PRESIGND_DEV_STATE="$2" bash "$HERE/run.sh" --once)"; then
        log "FAILED: $what: run.sh exited non-zero"
        exit 1
    fi
    if ! grep -qx 'hello from presignd' <<<"$out"; then
        log "FAILED: $what: no object served through the printed link. Output:"
        printf '%s\n' "$out" >&2
        exit 1
    fi
    log "ok: $what"
}

serves_a_link "1. a run on the current state" "$STATE"
rm -rf "$STATE"
serves_a_link "2. the state removed, its services still running" "$STATE"
serves_a_link "3. a second checkout's state on the same machine" "$OTHER"
serves_a_link "4. the first state again, after the second one's services" "$STATE"
PRESIGND_DEV_STATE="$OTHER" bash "$HERE/stack.sh" reset
bash "$HERE/stack.sh" stop
rm -rf "$STATE"
serves_a_link "5. everything stopped, the state removed" "$STATE"
log "all runs served a link"
