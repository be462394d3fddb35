#!/usr/bin/env bash
# Brings up the dev/test stack on this machine, idempotently:
#   * PostgreSQL 15 (Debian cluster 15/main): a role with a password and CREATEDB
#     (for #[sqlx::test]) and the `presignd` database;
#   * Garage 2.5 (installed with cargo if missing), single node, layout applied,
#     buckets created;
# and writes the environment the tools and tests need to $STATE/env.
# Usage: deploy/dev/stack.sh   (then: source deploy/dev/.state/env)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${PRESIGND_DEV_STATE:-$HERE/.state}"
PG_VERSION=15
PG_USER=presignd
PG_PASSWORD=presignd-dev
PG_DB=presignd
GARAGE_VERSION=2.5.0
BUCKETS=(presignd-dev presignd-test presignd-test-b)
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[stack] %s\n' "$*" >&2; }
mkdir -p "$STATE"

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
if ! su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'\"" | grep -q 1; then
    su postgres -c "createdb -O $PG_USER $PG_DB"
fi
DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/$PG_DB"
log "PostgreSQL ready"

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
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "$(openssl rand -hex 24)"
TOML
fi
GARAGE_ADMIN_TOKEN="$(sed -n 's/^admin_token = "\(.*\)"/\1/p' "$GCONF")"
g() { garage -c "$GCONF" "$@"; }
if ! curl -fsS -o /dev/null -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" http://127.0.0.1:3903/v2/GetClusterStatus 2>/dev/null; then
    log "starting Garage"
    nohup garage -c "$GCONF" server >"$STATE/garage.log" 2>&1 &
    echo $! >"$STATE/garage.pid"
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" http://127.0.0.1:3903/v2/GetClusterStatus 2>/dev/null && break
        sleep 0.2
    done
fi
if g layout show 2>/dev/null | grep -q "Current cluster layout version: 0"; then
    NODE="$(g node id -q | cut -d@ -f1)"
    g layout assign -z dc1 -c 1G "$NODE" >/dev/null
    g layout apply --version 1 >/dev/null
fi
for b in "${BUCKETS[@]}"; do
    g bucket info "$b" >/dev/null 2>&1 || g bucket create "$b" >/dev/null
done
log "Garage ready (S3 http://127.0.0.1:3900, admin http://127.0.0.1:3903)"

# ---------------------------------------------------------------- moto (IAM API only)
# moto serves AWS IAM's API semantics for the aws backend's tests. It does not
# check signatures or key status: it never proves a link works or is dead.
if ! command -v moto_server >/dev/null; then
    log "installing moto server"
    python3 -m pip install --quiet 'moto[server]'
fi
if ! curl -fsS -o /dev/null http://127.0.0.1:5000/moto-api/ 2>/dev/null; then
    log "starting moto"
    nohup moto_server -H 127.0.0.1 -p 5000 >"$STATE/moto.log" 2>&1 &
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null http://127.0.0.1:5000/moto-api/ 2>/dev/null && break
        sleep 0.2
    done
fi
log "moto ready (IAM http://127.0.0.1:5000)"

# ---------------------------------------------------------------- environment
[ -f "$STATE/master.key" ] || (umask 077 && openssl rand -hex 32 >"$STATE/master.key")
cat >"$STATE/env" <<ENV
export DATABASE_URL='$DATABASE_URL'
export GARAGE_ADMIN_URL='http://127.0.0.1:3903'
export GARAGE_ADMIN_TOKEN='$GARAGE_ADMIN_TOKEN'
export GARAGE_S3_URL='http://127.0.0.1:3900'
export GARAGE_REGION='garage'
export PRESIGND_DEV_MASTER_KEY_FILE='$STATE/master.key'
export PRESIGND_TEST_BUCKETS='presignd-test,presignd-test-b'
export MOTO_URL='http://127.0.0.1:5000'
# moto accepts any credentials; these only make the AWS SDK's chain find some.
export AWS_ACCESS_KEY_ID='moto-testing'
export AWS_SECRET_ACCESS_KEY='moto-testing'
ENV
log "environment written to $STATE/env"
