#!/usr/bin/env bash
# The main job on the local default: brings up PostgreSQL + Garage (stack.sh),
# migrates, starts presignd, uploads a sample object through a PUT link, issues a
# GET link for it and prints it (curl on it returns the object). Runs until
# Ctrl-C; with --once it exits after the link was served (CI uses that).
# On exit, for whatever reason, the server is stopped; the stack keeps running
# for the next run (`deploy/dev/stack.sh stop` stops it).
# Usage: deploy/dev/run.sh [--once]     (PORT=50051, METRICS_PORT=9464 by default)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${PRESIGND_DEV_STATE:-$HERE/.state}"
PORT="${PORT:-50051}"
METRICS_PORT="${METRICS_PORT:-9464}"
BUCKET=presignd-dev
ONCE=false
case "${1:-}" in
    --once) ONCE=true ;;
    "") ;;
    *) echo "usage: $0 [--once]" >&2; exit 2 ;;
esac

bash "$HERE/stack.sh"
# shellcheck disable=SC1091
source "$STATE/env"

echo "[run] building presignd" >&2
cargo build --quiet --bins --manifest-path "$REPO/Cargo.toml"
BIN="$REPO/target/debug"

# A dev caller token, kept with the state; only its hash is given to presignd.
[ -f "$STATE/dev.token" ] || (umask 077 && openssl rand -hex 24 >"$STATE/dev.token")
TOKEN="$(cat "$STATE/dev.token")"

# shellcheck disable=SC1091
source "$HERE/serve-env.sh"
serve_env "$BIN/presignd" "127.0.0.1:$PORT" "127.0.0.1:$METRICS_PORT" dev "$TOKEN" "$BUCKET"

"$BIN/presignd" migrate
"$BIN/presignd" serve &
SERVER=$!
stop_server() {
    local code=$?
    trap - EXIT INT TERM
    kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    case "$code" in
        0 | 130) echo "[run] presignd stopped." >&2 ;;
        *) echo "[run] failed (exit $code): presignd stopped." >&2 ;;
    esac
    echo "[run] PostgreSQL, Garage and moto keep running for the next run; stop them with: $HERE/stack.sh stop" >&2
    exit "$code"
}
trap stop_server EXIT
trap 'exit 130' INT TERM

export PRESIGND_ENDPOINT="http://127.0.0.1:$PORT" PRESIGND_TOKEN="$TOKEN"
# Wait for readiness, but not for a server that already exited (a port in
# use, a bad setting: its own error is above).
"$BIN/presignctl" wait-ready --timeout-secs 120 &
WAITING=$!
while kill -0 "$WAITING" 2>/dev/null; do
    if ! kill -0 "$SERVER" 2>/dev/null; then
        kill "$WAITING" 2>/dev/null || true
        echo "[run] presignd exited before it was ready: see its error above" >&2
        exit 1
    fi
    sleep 0.2
done
wait "$WAITING"

PUT_URL="$("$BIN/presignctl" issue --bucket "$BUCKET" --key hello.txt --method PUT --ttl 300)"
printf 'hello from presignd\n' | curl -fsS -X PUT --data-binary @- "$PUT_URL"
GET_URL="$("$BIN/presignctl" issue --bucket "$BUCKET" --key hello.txt --ttl 3600 --label purpose=demo)"

cat <<MSG

presignd is serving on 127.0.0.1:$PORT (Ctrl-C to stop).
A GET link for s3://$BUCKET/hello.txt, valid one hour:

$GET_URL

curl it:
MSG
curl -fsS "$GET_URL"
$ONCE && exit 0
cat <<MSG

Try:  grpcurl -plaintext 127.0.0.1:$PORT list
      PRESIGND_TOKEN=\$(cat $STATE/dev.token) $BIN/presignctl issue --bucket $BUCKET --key hello.txt
MSG
wait $SERVER
