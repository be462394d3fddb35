#!/usr/bin/env bash
# IssueLink measured from outside the process, as /work/shared/MEASURED.md
# measures the landed main: the release `presignd serve` (configured as
# deploy/dev/run.sh configures it) on a scratch database of the dev stack,
# h2load (Debian's nghttp2-client, installed if missing) as the client, 16
# connections x 4 streams. Per round: the no-op (grpc.health.v1.Health/Check)
# then IssueLink, closed loop; the rows committed must equal the requests
# answered (gRPC errors are HTTP 200: h2load's "succeeded" alone proves
# nothing), and the CPU per committed link of the server and of the scratch
# database's PostgreSQL backends (utime+stime from /proc), links a commit
# (the group commit's batch, from pg_stat_database), WAL a link, and the time
# a link's server threads and backends spent runnable but waiting for a CPU
# (/proc/<pid>/schedstat), and the cluster's WAL flushes with their mean time
# (pg_stat_wal; stack.sh turns track_wal_io_timing on). Then an open loop
# at half the best IssueLink rate (p50/p99/p99.9 from h2load's log, and the
# share within 2/3/5/10 ms by the server's own histogram, and the time a
# link's server threads and backends waited for a CPU), twice: as h2load
# paces it (bursts) and from 16 staggered processes (spread); the no-op
# spread at the same rate, for scale (the latency of an RPC that does
# nothing, on the same cores); and the server's resident memory. The
# scratch database is dropped on exit.
# Usage: deploy/dev/h2load-bench.sh   (env: N=IssueLinks per round [150000],
#   ROUNDS [2], PRESIGND_RECORD_WORKERS, BIN=a presignd binary [release build],
#   PIN=1 the server on one CPU and PostgreSQL's backends on the other,
#   EXTRA_SQL=SQL run on the scratch database after `presignd migrate`)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# h2load is the client (no test needs it): installed here on a fresh machine,
# as stack.sh installs the stack's tools.
if ! command -v h2load >/dev/null; then
    echo "[h2load-bench] installing nghttp2-client (h2load)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; } ||
        { echo "h2load is missing and could not be installed: apt-get install nghttp2-client (as root)" >&2; exit 1; }
fi
N="${N:-150000}"
ROUNDS="${ROUNDS:-2}"
if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release --bin presignd --manifest-path "$REPO/Cargo.toml"
    BIN="$REPO/target/release/presignd"
fi
# shellcheck disable=SC1091
source "$HERE/.state/env"
DB=presignd_h2load_bench
BASE="${DATABASE_URL%/*}"
QUERY="${DATABASE_URL#*\?}"
export DATABASE_URL="$BASE/$DB?$QUERY"
ADMIN="$BASE/postgres?$QUERY"
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
WORK="$(mktemp -d)"
TOKEN="bench-$(openssl rand -hex 16)"
# shellcheck disable=SC1091
source "$HERE/serve-env.sh"
serve_env "$BIN" 127.0.0.1:50071 127.0.0.1:9481 bench "$TOKEN" presignd-dev
export RUST_LOG="${RUST_LOG:-warn}"
"$BIN" migrate >/dev/null
# A/B of a schema setting on the same binary: SQL run once migrated.
[ -n "${EXTRA_SQL:-}" ] && psql "$DATABASE_URL" -qc "$EXTRA_SQL"
# PIN=1: the server on CPU 0 and the cluster's new backends on CPU 1, as a
# registry on a machine of its own would have them (h2load runs on either).
# Left to the scheduler, the two share both cores; docs/BENCHMARKS.md
# (2026-12-03) measures what that costs. The no-op runs on the same pinned
# server. The postmaster's CPUs are restored on exit (after a kill -9 of this
# script: `taskset -pc 0-$(($(nproc) - 1)) <the postmaster's pid>`).
PIN_SERVER=()
PM=""
if [ "${PIN:-0}" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs two CPUs" >&2; exit 1; }
    port="$(echo "$DATABASE_URL" | sed -E 's|.*@[^/]*:([0-9]+)/.*|\1|')"
    PM="$(head -1 "$(pg_lsclusters -h | awk -v p="$port" '$3 == p { print $6 }')/postmaster.pid")"
    PM_CPUS="$(taskset -pc "$PM" | sed 's/.*: //')"
    taskset -pc 1 "$PM" >/dev/null
    PIN_SERVER=(taskset -c 0)
fi
"${PIN_SERVER[@]}" "$BIN" serve 2>"$WORK/server.log" &
SERVER=$!
cleanup() {
    [ -n "$PM" ] && taskset -pc "$PM_CPUS" "$PM" >/dev/null
    kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# Ready (health SERVING): keys loaded, the registry's connections open.
for _ in $(seq 150); do
    curl -sf "http://$PRESIGND_METRICS_LISTEN/metrics" | grep -q '^presignd_ready 1' && break
    sleep 0.2
done

# gRPC frames: a zero byte, a 4-byte big-endian length, the message. The
# IssueLink request: bucket presignd-dev, key bench/object.bin, GET, 300 s.
python3 - "$WORK" <<'EOF'
import struct, sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])
def field(num, wire, payload):
    return varint(num << 3 | wire) + (varint(len(payload)) + payload if wire == 2 else payload)
frame = lambda m: b"\0" + struct.pack(">I", len(m)) + m
issue = (field(1, 2, b"presignd-dev") + field(2, 2, b"bench/object.bin")
         + field(3, 0, varint(1)) + field(4, 2, field(1, 0, varint(300))))
open(sys.argv[1] + "/issue.bin", "wb").write(frame(issue))
open(sys.argv[1] + "/health.bin", "wb").write(frame(b""))
EOF
H=(-H content-type:application/grpc -H te:trailers -H "authorization: Bearer $TOKEN")
URL="http://$PRESIGND_LISTEN"
ISSUE="$URL/presignd.v1.LinkService/IssueLink"
NOOP="$URL/grpc.health.v1.Health/Check"

rows() { psql "$DATABASE_URL" -Atc "SELECT count(*) FROM links"; }
commits() { psql "$ADMIN" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'"; }
wal() { psql "$ADMIN" -Atc "SELECT pg_current_wal_lsn()"; }
# The cluster's WAL flushes (pg_stat_wal; their time only if track_wal_io_timing is on).
syncs() { psql "$ADMIN" -AtF' ' -c "SELECT wal_sync, wal_sync_time, current_setting('track_wal_io_timing') FROM pg_stat_wal"; }
sync_report() {
    awk 'NR == FNR { n = $1; t = $2; next } { n = $1 - n; t = $2 - t
        if ($3 == "on" && n > 0) printf "%d WAL flushes, %.3f ms each", n, t / n
        else printf "%d WAL flushes (their time: track_wal_io_timing is off)", n }' "$1" "$2"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
backends() {
    for p in $(psql "$DATABASE_URL" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND pid <> pg_backend_pid()"); do
        echo "$p $(ticks "$p")"
    done
}
# CPU ticks of the backends between two snapshots (a backend opened meanwhile counts from 0).
backend_ticks() { awk 'NR == FNR { a[$1] = $2; next } { d += $2 - a[$1] } END { print d + 0 }' "$1" "$2"; }
# Time runnable but waiting for a CPU (schedstat's second field, ns), "id ns"
# lines: the server's threads; the backends listed in $1.
queued_server() { for t in /proc/"$SERVER"/task/*; do echo "${t##*/} $(cut -d' ' -f2 "$t/schedstat" 2>/dev/null || echo 0)"; done; }
queued_backends() { for p in $(cut -d' ' -f1 "$1"); do echo "$p $(cut -d' ' -f2 "/proc/$p/schedstat" 2>/dev/null || echo 0)"; done; }
queued_us() { awk -v n="$3" 'NR == FNR { a[$1] = $2; next } { d += $2 - a[$1] } END { printf "%.1f", d / 1000 / n }' "$1" "$2"; }
# queued NAME BACKENDS: a snapshot of both, named NAME; queued_report A B N:
# what was waited between snapshots A and B, per link of N.
queued() { queued_server >"$WORK/$1.qs"; queued_backends "$2" >"$WORK/$1.qp"; }
queued_report() {
    echo "waiting for a CPU a link: server $(queued_us "$WORK/$1.qs" "$WORK/$2.qs" "$3") us," \
        "Postgres $(queued_us "$WORK/$1.qp" "$WORK/$2.qp" "$3") us"
}
rate() { sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p'; }
ok() { sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p'; }
per_link() { awk -v t="$1" -v n="$2" 'BEGIN { printf "%.1f", t * 1e6 / 100 / n }'; }

h2load -n 2000 -c 16 -m 4 "${H[@]}" -d "$WORK/issue.bin" "$ISSUE" >/dev/null
best=0
for round in $(seq "$ROUNDS"); do
    n0=$(ticks "$SERVER")
    noop=$(h2load -n $((N * 4)) -c 16 -m 4 "${H[@]}" -d "$WORK/health.bin" "$NOOP" | rate)
    noop_cpu=$(per_link $(($(ticks "$SERVER") - n0)) $((N * 4)))
    before=$(rows); backends >"$WORK/b0"; s0=$(ticks "$SERVER")
    queued c0 "$WORK/b0"
    c0=$(commits); w0=$(wal); syncs >"$WORK/y0"
    out=$(h2load -n "$N" -c 16 -m 4 "${H[@]}" -d "$WORK/issue.bin" "$ISSUE")
    s1=$(ticks "$SERVER"); backends >"$WORK/b1"; w1=$(wal); after=$(rows)
    queued c1 "$WORK/b1"
    sleep 1; c1=$(commits); syncs >"$WORK/y1" # the statistics reach pg_stat_* within ~0.5 s
    committed=$((after - before)); answered=$(echo "$out" | ok); r=$(echo "$out" | rate)
    if [ "$committed" != "$answered" ]; then
        echo "round $round: $answered answered OK but $committed rows committed" >&2
        exit 1
    fi
    awk -v r="$r" -v b="$best" 'BEGIN { exit !(r > b) }' && best=$r
    echo "round $round: no-op $noop/s (server $noop_cpu us a call); IssueLink $r/s ($committed links committed);" \
        "ratio $(awk -v a="$r" -v b="$noop" 'BEGIN { printf "%.2f", a / b }');" \
        "CPU per link: server $(per_link $((s1 - s0)) "$committed") us," \
        "Postgres $(per_link "$(backend_ticks "$WORK/b0" "$WORK/b1")" "$committed") us;" \
        "~$(( c1 > c0 ? committed / (c1 - c0) : 0 )) links a commit;" \
        "WAL $(psql "$ADMIN" -Atc "SELECT round(pg_wal_lsn_diff('$w1', '$w0') / $committed)") B a link;" \
        "$(queued_report c0 c1 "$committed");" \
        "$(sync_report "$WORK/y0" "$WORK/y1");" \
        "load $(cut -d' ' -f1 /proc/loadavg)"
done
per_conn=$(awk -v b="$best" 'BEGIN { printf "%d", b / 2 / 16 }')
# The server's own IssueLink latency (validated request to committed link,
# presignd_issue_link_duration_seconds) over the open loop, beside h2load's.
# And the group commits' (presignd_link_commit_duration_seconds): a request
# waits for the commit under way, then for its own.
latency_buckets() {
    curl -sf "http://$PRESIGND_METRICS_LISTEN/metrics" >"$WORK/metrics"
    sed -n 's/^presignd_issue_link_duration_seconds_bucket{outcome="ok",le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p' "$WORK/metrics" >"$1"
    sed -n 's/^presignd_link_commit_duration_seconds_bucket{le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p' "$WORK/metrics" >"$2"
}
within() {
    awk -v who="$3" 'NR == FNR { a[$1] = $2; next } { d[$1] = $2 - a[$1]; n = d[$1] }
        END { printf "  %s: %.1f%% within 1 ms, %.1f%% within 2 ms, %.1f%% within 3 ms, %.1f%% within 5 ms, %.1f%% within 10 ms (%d)\n",
            who, 100 * d["0.001"] / n, 100 * d["0.002"] / n, 100 * d["0.003"] / n, 100 * d["0.005"] / n, 100 * d["0.01"] / n, n }' "$1" "$2"
}
percentiles() {
    sort -n -k3 "$1" | awk -v what="$2" '{ a[NR] = $3 } END {
        printf "%s: %d requests, p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
            what, NR, a[int(NR * 0.5)] / 1000, a[int(NR * 0.99)] / 1000, a[int(NR * 0.999)] / 1000 }'
}
# How the requests arrived: runs of starts less than 200 us apart (h2load's
# log, first column, in us), their mean size.
bursts() {
    sort -n "$1" | awk 'NR > 1 && $1 - t > 200 { runs++ } { t = $1 } END {
        printf "  arrivals: %.1f requests a burst on average (starts < 200 us apart)\n", NR / (runs + 1) }'
}
# open_loop WHAT LOG COMMAND...: runs the command (h2load writing LOG) and
# reports h2load's percentiles, the arrivals, the server's own histograms
# and links a commit over it.
open_loop() {
    local what="$1" log="$2"
    shift 2
    latency_buckets "$WORK/h0" "$WORK/k0"; c0=$(commits); r0=$(rows)
    backends >"$WORK/ob"; queued o0 "$WORK/ob"
    "$@"
    queued o1 "$WORK/ob"
    latency_buckets "$WORK/h1" "$WORK/k1"; r1=$(rows); sleep 1; c1=$(commits)
    percentiles "$log" "$what"
    bursts "$log"
    within "$WORK/h0" "$WORK/h1" "the server's own IssueLink (request to commit)"
    within "$WORK/k0" "$WORK/k1" "its group commits (links_record's statement)"
    echo "  ~$(( c1 > c0 ? (r1 - r0) / (c1 - c0) : 0 )) links a commit over the open loop;" \
        "$(queued_report o0 o1 "$((r1 - r0))")"
}
paced() {
    h2load -c 16 -m 8 --rps "$per_conn" -D 20 "${H[@]}" -d "$WORK/issue.bin" \
        --log-file="$WORK/lat.tsv" "$ISSUE" >/dev/null
}
# h2load's --rps fires its connections' timers together: the paced loop
# sends its requests in bursts (51-65 starting within 200 us on average,
# docs/BENCHMARKS.md), and a burst's latency is its last commit's. The same
# rate spread: 16 h2load processes of one connection each, started evenly
# across one interval, arrive as 16 independent callers would.
# spread BODY URL LOG: BODY's request to URL, h2load's log into LOG.
spread() {
    local body="$1" url="$2" log="$3" pids=() i
    rm -f "$WORK"/spread[0-9]*.tsv
    for i in $(seq 0 15); do
        (sleep "$(awk -v i="$i" -v r="$per_conn" 'BEGIN { printf "%.6f", i / 16 / r }')"
         h2load -c 1 -m 8 --rps "$per_conn" -D 20 "${H[@]}" -d "$WORK/$body" \
             --log-file="$WORK/spread$i.tsv" "$url" >/dev/null) &
        pids+=($!)
    done
    wait "${pids[@]}"
    cat "$WORK"/spread[0-9]*.tsv >"$log"
}
open_loop "open loop at $((per_conn * 16))/s (half the best), paced by h2load" "$WORK/lat.tsv" paced
open_loop "open loop at $((per_conn * 16))/s, spread over 16 staggered h2load processes" "$WORK/spread.tsv" \
    spread issue.bin "$ISSUE" "$WORK/spread.tsv"
spread health.bin "$NOOP" "$WORK/noop.tsv"
percentiles "$WORK/noop.tsv" "the no-op at the same rate, spread"
echo "server resident memory: $(awk '/^VmRSS/ { print $2 / 1024 " MB" }' "/proc/$SERVER/status") after $(rows) links"
