#!/usr/bin/env bash
# The dev/test stack on this machine. Everything it makes belongs to one *state*
# (deploy/dev/.state, or $PRESIGND_DEV_STATE), named by a random id made with it:
#   * PostgreSQL 15 (Debian cluster 15/main, machine-wide): a role with a
#     password and CREATEDB (for #[sqlx::test]) and the state's own database
#     `presignd_dev_<id>`. A new state gets a new, empty registry, so a removed
#     state (git clean -xdf) or a second clone never meets keys sealed under
#     another master key. Databases of states that no longer exist are dropped.
#   * Garage 2.5 (installed with cargo if missing), single node, config and data
#     in the state. A Garage on these ports started from another state is
#     stopped, said so, and started again from this one: never half-talked-to.
#   * moto (IAM API for the aws backend's tests), likewise owned by the state.
# and writes the environment the tools and tests need to $STATE/env.
#
# Usage: deploy/dev/stack.sh [up]   bring it up (idempotent), then: source deploy/dev/.state/env
#        deploy/dev/stack.sh stop   stop what this state started (Garage, moto, and
#                                   PostgreSQL if this state started it)
#        deploy/dev/stack.sh reset  stop, drop this state's database, remove the state
#        deploy/dev/stack.sh status what runs, and for which state
#        deploy/dev/stack.sh replica [up|stop]  opt-in: a streaming replica on :5433
#                                   (REPLICA_PORT), REPLICA_DATABASE_URL in the env
# Ports (change them to run a second stack beside the first):
#   GARAGE_PORT_BASE (3900: S3 on it, RPC +1, admin +3), MOTO_PORT (5000).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${PRESIGND_DEV_STATE:-$HERE/.state}"
PG_VERSION=15
PG_USER=presignd
PG_PASSWORD=presignd-dev
GARAGE_VERSION=2.5.0
GARAGE_PORT_BASE="${GARAGE_PORT_BASE:-3900}"
S3_PORT=$GARAGE_PORT_BASE
RPC_PORT=$((GARAGE_PORT_BASE + 1))
ADMIN_PORT=$((GARAGE_PORT_BASE + 3))
MOTO_PORT="${MOTO_PORT:-5000}"
BUCKETS=(presignd-dev presignd-test presignd-test-b)
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }
psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtA $*"; }

# The pids listening on a TCP port of this machine.
listeners() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u; }
# Stops the process listening on $1 if it is a $2 (by command name); refuses to
# touch anything else.
stop_listener() {
    local port=$1 what=$2 why=$3 pid
    for pid in $(listeners "$port"); do
        if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$what"; then
            die "port $port is taken by pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline")), not $what: stop it or set other ports (see the header of $0)"
        fi
        log "stopping $what (pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")): $why"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}
# The pid this state recorded for a service, if that process still runs.
our_pid() {
    local f="$STATE/$1.pid" pid
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

state_id() { cat "$STATE/id" 2>/dev/null; }
db_name() { echo "presignd_dev_$(state_id)"; }

# ---------------------------------------------------------------- stop / reset / status
stop_stack() {
    local pid
    for svc in garage moto; do
        if pid="$(our_pid "$svc")"; then
            log "stopping $svc (pid $pid)"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/$svc.pid"
    done
    if [ -f "$STATE/replica.started" ]; then
        log "stopping the streaming replica (cluster $PG_VERSION/replica; this state started it)"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" replica stop || true
        rm -f "$STATE/replica.started"
    fi
    if [ -f "$STATE/postgres.started" ]; then
        log "stopping PostgreSQL $PG_VERSION (this state started it)"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main stop || true
        rm -f "$STATE/postgres.started"
    fi
}

# ---------------------------------------------------------------- replica (opt-in)
# `stack.sh replica [up|stop]`: a streaming replica of cluster 15/main, for
# dashboards reading with --read-database-url and the test that reads through
# it. A second Debian cluster, 15/replica on $REPLICA_PORT (5433), whose data
# directory is a pg_basebackup of the primary taken as postgres over the local
# socket (peer auth: no role, no pg_hba change); -R makes it a standby that
# streams from the primary. Writes REPLICA_DATABASE_URL to $STATE/env (same
# role, same database names: the replica replicates the whole cluster).
# Creates (a base backup of the primary) and starts the replica cluster as needed.
replica_start() {
    local port=$1 data=$2
    if ! pg_lsclusters -h | grep -q "^$PG_VERSION replica "; then
        log "creating cluster $PG_VERSION/replica on port $port: a base backup of $PG_VERSION/main"
        pg_createcluster "$PG_VERSION" replica --port "$port" >/dev/null
        rm -rf "$data"
        su postgres -c "pg_basebackup -D '$data' -R -X stream -c fast -p 5432" \
            || { pg_dropcluster "$PG_VERSION" replica || true; die "pg_basebackup failed"; }
    fi
    if ! pg_lsclusters -h | grep -q "^$PG_VERSION replica .* online"; then
        log "starting the replica (port $port)"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" replica start
        mkdir -p "$STATE" && touch "$STATE/replica.started"
    fi
}

# Whether the replica, in recovery, replays past the primary's current WAL
# position within 20 s.
replica_caught_up() {
    local port=$1 lsn
    lsn="$(su postgres -c "psql -qtAc 'SELECT pg_current_wal_lsn()'")"
    for _ in $(seq 1 100); do
        [ "$(su postgres -c "psql -p $port -qtAc \"SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= '$lsn'\"" 2>/dev/null)" = t ] && return 0
        sleep 0.2
    done
    return 1
}

replica() {
    local port="${REPLICA_PORT:-5433}" data="/var/lib/postgresql/$PG_VERSION/replica"
    case "${1:-up}" in
        up) ;;
        stop)
            pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" replica stop 2>/dev/null || true
            sed -i '/^export REPLICA_DATABASE_URL=/d' "$STATE/env" 2>/dev/null || true
            log "replica stopped (cluster $PG_VERSION/replica kept; pg_dropcluster $PG_VERSION replica removes it)"
            return ;;
        *) die "replica: expected up or stop" ;;
    esac
    [ -n "$(state_id)" ] || die "no state in $STATE: run $0 up first"
    pg_lsclusters -h | grep -q "^$PG_VERSION main .* online" \
        || die "the primary (cluster $PG_VERSION/main) is not running: run $0 up first"
    replica_start "$port" "$data"
    # A replica that was down while the primary recycled its WAL can never
    # catch up (no replication slot, on purpose: a forgotten replica must not
    # fill the disk with WAL). It is rebuilt from a new base backup.
    if ! replica_caught_up "$port"; then
        log "the replica cannot catch up with the primary (WAL recycled while it was down?): rebuilding it"
        pg_dropcluster --stop "$PG_VERSION" replica || true
        replica_start "$port" "$data"
        replica_caught_up "$port" \
            || die "the replica on :$port does not replay the primary's WAL: see /var/log/postgresql/postgresql-$PG_VERSION-replica.log"
    fi
    sed -i '/^export REPLICA_DATABASE_URL=/d' "$STATE/env" 2>/dev/null || true
    echo "export REPLICA_DATABASE_URL='postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$(db_name)'" >>"$STATE/env"
    log "replica streaming from $PG_VERSION/main on :$port; REPLICA_DATABASE_URL in $STATE/env"
}

case "${1:-up}" in
    up) ;;
    replica)
        replica "${2:-up}"
        exit 0 ;;
    stop)
        stop_stack
        log "stopped what $STATE started"
        exit 0 ;;
    reset)
        stop_stack
        if [ -n "$(state_id)" ] && pg_lsclusters -h 2>/dev/null | grep -q "^$PG_VERSION main .* online"; then
            log "dropping database $(db_name)"
            psql_admin "-c 'DROP DATABASE IF EXISTS \"$(db_name)\" WITH (FORCE)'" || true
        fi
        rm -rf "$STATE"
        log "removed $STATE: the next run starts from an empty registry and a new Garage"
        exit 0 ;;
    status)
        echo "state: $STATE (id $(state_id || echo none), database $(db_name))"
        for svc in garage moto; do
            if pid="$(our_pid "$svc")"; then echo "$svc: running (pid $pid, this state)"; else echo "$svc: not running from this state"; fi
        done
        pg_lsclusters -h 2>/dev/null | grep "^$PG_VERSION main" || echo "PostgreSQL $PG_VERSION: no cluster"
        exit 0 ;;
    *) die "unknown command ${1}: expected up, stop, reset, status or replica" ;;
esac

for tool in ss:iproute2 curl:curl openssl:openssl systemd-analyze:systemd promtool:prometheus; do
    command -v "${tool%%:*}" >/dev/null || {
        log "installing ${tool#*:}"
        # Packages that ship a daemon (prometheus) must not start it here: the
        # usual policy-rc.d answer "no service starts", for this install only.
        made_policy=false
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=true
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
        if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
    }
done
mkdir -p "$STATE"
[ -f "$STATE/id" ] || (umask 077 && openssl rand -hex 4 >"$STATE/id")
PG_DB="$(db_name)"

# ---------------------------------------------------------------- PostgreSQL
if ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL $PG_VERSION"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$PG_VERSION" >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^$PG_VERSION main"; then
    pg_createcluster "$PG_VERSION" main >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^$PG_VERSION main .* online"; then
    log "starting PostgreSQL $PG_VERSION"
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
    touch "$STATE/postgres.started"
fi
for _ in $(seq 1 50); do
    su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1 && break
    sleep 0.2
done
su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
# Each dev database says which state it belongs to (its comment: the state's
# path and id). One whose state is gone, or holds another id, is dropped: its
# keys were sealed under a master key nobody has any more.
psql_admin "-F '|'" <<'SQL' | while IFS='|' read -r db comment; do
SELECT d.datname, coalesce(shobj_description(d.oid, 'pg_database'), '')
FROM pg_database d WHERE d.datname LIKE 'presignd\_dev\_%';
SQL
    [ "$db" = "$PG_DB" ] && continue
    path="${comment% *}" id="${comment##* }"
    if [ -z "$comment" ] || [ "$(cat "$path/id" 2>/dev/null)" != "$id" ]; then
        log "dropping $db: its state (${path:-unknown}) is gone"
        psql_admin "-c 'DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)'" </dev/null >/dev/null || true
    fi
done
if ! psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'\"" | grep -q 1; then
    log "creating database $PG_DB for this state"
    su postgres -c "createdb -O $PG_USER $PG_DB"
    psql_admin "-c \"COMMENT ON DATABASE $PG_DB IS '$STATE $(state_id)'\""
fi
# In clear on loopback: the suite opens thousands of short-lived connections,
# and TLS to Postgres has tests of its own (tests/it/postgres_tls.rs) that ask
# for each sslmode explicitly.
DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/$PG_DB?sslmode=disable"
log "PostgreSQL ready (database $PG_DB)"

# ---------------------------------------------------------------- PostgreSQL TLS (dev CA)
# PostgreSQL serves TLS with a certificate from a dev CA made here once, for the
# name `localhost` ONLY: `sslmode=verify-full` to localhost passes, to 127.0.0.1
# it is the "wrong host name" case (tests/it/postgres_tls.rs). The files live
# beside the cluster's config (not in the state: postgresql.auto.conf names them,
# and a PostgreSQL restart must find them whatever happened to a state), owned by
# postgres, the key 0600. The CA's key is thrown away once the certificate is
# signed: nothing else can ever be issued under this CA. Made again only when a
# file is missing or the certificate expires within 30 days. Clients that do not
# ask for TLS (no sslmode, or sslmode=disable) are served as before.
PG_TLS_DIR="/etc/postgresql/$PG_VERSION/main/presignd-dev-tls"
PG_CA="$PG_TLS_DIR/ca.pem"
if [ ! -s "$PG_CA" ] || [ ! -s "$PG_TLS_DIR/server.key" ] ||
    ! openssl x509 -checkend 2592000 -noout -in "$PG_TLS_DIR/server.pem" >/dev/null 2>&1; then
    log "making a dev CA and a PostgreSQL server certificate for localhost in $PG_TLS_DIR"
    tls_tmp="$(mktemp -d)"
    (
        cd "$tls_tmp" && umask 077
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
        openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=presignd dev PostgreSQL CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req "${ec[@]}" -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' "subjectAltName=DNS:localhost" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
            -extfile server.ext -out server.pem 2>/dev/null
    )
    install -d -o postgres -g postgres -m 0755 "$PG_TLS_DIR"
    install -o postgres -g postgres -m 0600 "$tls_tmp/server.key" "$PG_TLS_DIR/server.key.new"
    install -o postgres -g postgres -m 0644 "$tls_tmp/server.pem" "$PG_TLS_DIR/server.pem.new"
    install -o postgres -g postgres -m 0644 "$tls_tmp/ca.pem" "$PG_TLS_DIR/ca.pem.new"
    rm -rf "$tls_tmp"
    # Renamed last, each at once: a reload or restart meanwhile reads a whole pair.
    for f in server.key server.pem ca.pem; do mv -f "$PG_TLS_DIR/$f.new" "$PG_TLS_DIR/$f"; done
fi
psql_admin <<SQL >/dev/null
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = '$PG_TLS_DIR/server.pem';
ALTER SYSTEM SET ssl_key_file = '$PG_TLS_DIR/server.key';
-- The WAL flushes' time in pg_stat_wal, which deploy/dev/h2load-bench.sh
-- reports a round (one clock read around each flush).
ALTER SYSTEM SET track_wal_io_timing = on;
SELECT pg_reload_conf();
SQL
# The reload is asynchronous, and a certificate PostgreSQL cannot load is only
# logged (it keeps the previous one): check what it serves, as a client would.
pg_tls_ok() {
    openssl s_client -starttls postgres -connect localhost:5432 -verify_hostname localhost \
        -CAfile "$PG_CA" -verify_return_error </dev/null >/dev/null 2>&1
}
for _ in $(seq 1 50); do pg_tls_ok && break; sleep 0.2; done
pg_tls_ok || die "PostgreSQL does not serve the dev certificate of $PG_TLS_DIR: see its log (pg_lsclusters)"
log "PostgreSQL serves TLS for localhost (CA $PG_CA)"
# ---------------------------------------------------------------- end of PostgreSQL TLS

# ---------------------------------------------------------------- Garage
if ! garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    log "installing Garage $GARAGE_VERSION with cargo (about 10 minutes, once)"
    cargo install garage --locked --version "$GARAGE_VERSION" \
        --no-default-features --features lmdb,bundled-libs
fi
GCONF="$STATE/garage.toml"
if [ ! -f "$GCONF" ]; then
    mkdir -p "$STATE/garage/meta" "$STATE/garage/data"
    cat >"$GCONF" <<TOML
metadata_dir = "$STATE/garage/meta"
data_dir = "$STATE/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$(openssl rand -hex 24)"
TOML
fi
GARAGE_ADMIN_TOKEN="$(sed -n 's/^admin_token = "\(.*\)"/\1/p' "$GCONF")"
g() { garage -c "$GCONF" "$@"; }
garage_is_ours() {
    curl -fsS -o /dev/null -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" \
        "http://127.0.0.1:$ADMIN_PORT/v2/GetClusterStatus" 2>/dev/null
}
if ! garage_is_ours; then
    # Whatever holds Garage's ports now was started from another state (its
    # token and rpc_secret differ): talking to it would half-work at best.
    for port in $ADMIN_PORT $RPC_PORT $S3_PORT; do
        stop_listener "$port" garage "it was not started from this state ($STATE)"
    done
    log "starting Garage"
    nohup garage -c "$GCONF" server >"$STATE/garage.log" 2>&1 &
    echo $! >"$STATE/garage.pid"
    for _ in $(seq 1 100); do
        garage_is_ours && break
        kill -0 "$(cat "$STATE/garage.pid")" 2>/dev/null || die "Garage exited at start: see $STATE/garage.log"
        sleep 0.2
    done
    garage_is_ours || die "Garage did not answer on :$ADMIN_PORT within 20 s: see $STATE/garage.log"
fi
if g layout show 2>/dev/null | grep -q "Current cluster layout version: 0"; then
    NODE="$(g node id -q | cut -d@ -f1)"
    g layout assign -z dc1 -c 1G "$NODE" >/dev/null
    g layout apply --version 1 >/dev/null
fi
for b in "${BUCKETS[@]}"; do
    g bucket info "$b" >/dev/null 2>&1 || g bucket create "$b" >/dev/null
done
log "Garage ready (S3 http://127.0.0.1:$S3_PORT, admin http://127.0.0.1:$ADMIN_PORT)"

# ---------------------------------------------------------------- moto (IAM API only)
# moto serves AWS IAM's API semantics for the aws backend's tests. It does not
# check signatures or key status: it never proves a link works or is dead.
if ! command -v moto_server >/dev/null; then
    log "installing moto server"
    python3 -m pip install --quiet 'moto[server]'
fi
moto_up() { curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null; }
MOTO_PID="$(our_pid moto || true)"
if [ -z "$MOTO_PID" ] || ! listeners "$MOTO_PORT" | grep -qx "$MOTO_PID"; then
    # A moto this state did not start holds IAM users and keys from other runs.
    stop_listener "$MOTO_PORT" moto "it was not started from this state ($STATE)"
    log "starting moto"
    nohup moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$STATE/moto.log" 2>&1 &
    echo $! >"$STATE/moto.pid"
    for _ in $(seq 1 100); do
        moto_up && break
        sleep 0.2
    done
    moto_up || die "moto did not answer on :$MOTO_PORT within 20 s: see $STATE/moto.log"
fi
log "moto ready (IAM http://127.0.0.1:$MOTO_PORT)"

# ---------------------------------------------------------------- environment
[ -f "$STATE/master.key" ] || (umask 077 && openssl rand -hex 32 >"$STATE/master.key")
cat >"$STATE/env" <<ENV
export DATABASE_URL='$DATABASE_URL'
export GARAGE_ADMIN_URL='http://127.0.0.1:$ADMIN_PORT'
export GARAGE_ADMIN_TOKEN='$GARAGE_ADMIN_TOKEN'
export GARAGE_S3_URL='http://127.0.0.1:$S3_PORT'
export GARAGE_REGION='garage'
export PRESIGND_DEV_MASTER_KEY_FILE='$STATE/master.key'
export PRESIGND_DEV_PG_CA='$PG_CA'
export PRESIGND_TEST_BUCKETS='presignd-test,presignd-test-b'
export MOTO_URL='http://127.0.0.1:$MOTO_PORT'
$(pg_lsclusters -h | grep -q "^$PG_VERSION replica .* online" && echo "export REPLICA_DATABASE_URL='postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:${REPLICA_PORT:-5433}/$PG_DB'")
# moto accepts any credentials; these only make the AWS SDK's chain find some.
export AWS_ACCESS_KEY_ID='moto-testing'
export AWS_SECRET_ACCESS_KEY='moto-testing'
ENV
log "environment written to $STATE/env (state $STATE, id $(state_id))"
