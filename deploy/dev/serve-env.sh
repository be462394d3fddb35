# Sourced, not run: presignd's environment on the dev stack, for the scripts
# that start a server of their own (run.sh, h2load-bench.sh), so that both
# configure it alike. Source "$STATE/env" (stack.sh writes it) first.
# Usage: serve_env BIN LISTEN METRICS_LISTEN CALLER TOKEN BUCKET
#   BIN: a presignd binary (hashes TOKEN); CALLER: the one caller, an admin,
#   whose bearer token is TOKEN; BUCKET: the bucket it may use.
serve_env() {
    local bin=$1 caller=$4 token=$5 hash
    hash="$("$bin" hash-token "$token")"
    export PRESIGND_LISTEN="$2" PRESIGND_METRICS_LISTEN="$3"
    export PRESIGND_CALLERS="$caller:$hash" PRESIGND_ADMINS="$caller"
    export PRESIGND_MASTER_KEY_FILE="$PRESIGND_DEV_MASTER_KEY_FILE"
    export PRESIGND_GARAGE_ADMIN_URL="$GARAGE_ADMIN_URL" PRESIGND_GARAGE_ADMIN_TOKEN="$GARAGE_ADMIN_TOKEN"
    export PRESIGND_S3_ENDPOINT="$GARAGE_S3_URL" PRESIGND_S3_REGION="$GARAGE_REGION"
    export PRESIGND_BUCKETS="$6"
}
