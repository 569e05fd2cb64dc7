#!/usr/bin/env bash
# The team stack on this machine: PostgreSQL, an S3-compatible store (moto's server),
# and `mlflow server` on both behind MLflow's basic-auth app. The same commands as
# the README's team section and tests/test_team_stack.py, on fixed ports.
# Ctrl-C stops every server; the data stays in $STACK_DIR for the next start.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
STACK_DIR=${STACK_DIR:-${TMPDIR:-/tmp}/reglab-stack-$(id -un)}
PG_PORT=${PG_PORT:-55432}
S3_PORT=${S3_PORT:-9000}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PG_PASSWORD=${PG_PASSWORD:-change-me-database-password}
ADMIN_PASSWORD=${MLFLOW_AUTH_ADMIN_PASSWORD:-change-me-admin-password}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-reglab-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-reglab-local-secret}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v pg_ctl || echo /missing/pg_ctl)")
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is not installed: make services" >&2; exit 2; }
# PostgreSQL refuses to run as root: run it as the package's postgres user then.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$STACK_DIR"
[ "$(id -u)" = 0 ] && chown postgres "$STACK_DIR"

if [ ! -d "$STACK_DIR/pg" ]; then
  umask 077
  echo "$PG_PASSWORD" > "$STACK_DIR/pwfile"
  [ "$(id -u)" = 0 ] && chown postgres "$STACK_DIR/pwfile"
  as_owner "$PG_BIN/initdb" -D "$STACK_DIR/pg" -U mlflow --pwfile="$STACK_DIR/pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust
  rm "$STACK_DIR/pwfile"
fi
PGCTL=("$PG_BIN/pg_ctl" -D "$STACK_DIR/pg" -l "$STACK_DIR/postgresql.log" -w
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $STACK_DIR")
as_owner "${PGCTL[@]}" start
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  as_owner "${PGCTL[@]}" stop -m fast || true
}
trap cleanup EXIT
trap "exit 130" INT TERM
for db in mlflow mlflow_auth; do
  as_owner "$PG_BIN/createdb" -h "$STACK_DIR" -p "$PG_PORT" -U mlflow "$db" || true
done

"$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STACK_DIR/s3.log" 2>&1 &
PIDS+=($!)
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
"$BIN/python" - <<PY
import time, boto3
s3 = boto3.client("s3", endpoint_url="$MLFLOW_S3_ENDPOINT_URL")
for attempt in range(50):
    try:
        existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        break
    except Exception:
        time.sleep(0.2)
for bucket in ("mlflow-artifacts", "reglab-dvc"):
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
PY

cat > "$STACK_DIR/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = admin
admin_password = $ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
INI
chmod 600 "$STACK_DIR/basic_auth.ini"
export MLFLOW_AUTH_CONFIG_PATH=$STACK_DIR/basic_auth.ini
export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(head -c 24 /dev/urandom | base64)}
# MLflow's job runner serves GenAI features (online scoring, judges); training runs do
# not use it, and it starts eight more processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
"$BIN/mlflow" server --app-name basic-auth \
  --backend-store-uri "postgresql+psycopg2://mlflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
  --artifacts-destination s3://mlflow-artifacts \
  --host 127.0.0.1 --port "$MLFLOW_PORT" &
PIDS+=($!)
echo "MLflow: http://127.0.0.1:$MLFLOW_PORT (admin / \$MLFLOW_AUTH_ADMIN_PASSWORD); S3: $MLFLOW_S3_ENDPOINT_URL"
wait
