#!/usr/bin/env bash
# The main job on the local default: brings up PostgreSQL + Garage, migrates,
# starts presignd, uploads a sample object through a PUT link, issues a GET link
# for it and prints it (curl on it returns the object). Runs until Ctrl-C.
# Usage: deploy/dev/run.sh        (PORT=50051 by default)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PORT="${PORT:-50051}"
BUCKET=presignd-dev

bash "$HERE/stack.sh"
# shellcheck disable=SC1091
source "$HERE/.state/env"

echo "[run] building presignd" >&2
cargo build --quiet --bins --manifest-path "$REPO/Cargo.toml"
BIN="$REPO/target/debug"

# A dev caller token, kept across runs; only its hash is given to presignd.
[ -f "$HERE/.state/dev.token" ] || (umask 077 && openssl rand -hex 24 >"$HERE/.state/dev.token")
TOKEN="$(cat "$HERE/.state/dev.token")"

export PRESIGND_LISTEN="127.0.0.1:$PORT"
export PRESIGND_CALLERS="dev:$("$BIN/presignd" hash-token "$TOKEN")"
export PRESIGND_ADMINS=dev
export PRESIGND_MASTER_KEY_FILE="$PRESIGND_DEV_MASTER_KEY_FILE"
export PRESIGND_GARAGE_ADMIN_URL="$GARAGE_ADMIN_URL"
export PRESIGND_GARAGE_ADMIN_TOKEN="$GARAGE_ADMIN_TOKEN"
export PRESIGND_S3_ENDPOINT="$GARAGE_S3_URL"
export PRESIGND_S3_REGION="$GARAGE_REGION"
export PRESIGND_BUCKETS="$BUCKET"

"$BIN/presignd" migrate
"$BIN/presignd" serve &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM

export PRESIGND_ENDPOINT="http://127.0.0.1:$PORT" PRESIGND_TOKEN="$TOKEN"
"$BIN/presignctl" wait-ready --timeout-secs 120

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
cat <<MSG

Try:  grpcurl -plaintext 127.0.0.1:$PORT list
      PRESIGND_TOKEN=\$(cat $HERE/.state/dev.token) $BIN/presignctl issue --bucket $BUCKET --key hello.txt
MSG
wait $SERVER
