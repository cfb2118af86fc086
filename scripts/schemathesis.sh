#!/usr/bin/env bash
# Property-based contract test of the tenant REST API: Schemathesis against a live `mpegflow up`
# (PostgreSQL, embedded S3, control plane, workers), every check on every operation of
# /openapi.json. Fails on any 5xx, undocumented status code or content type, response that does
# not match its schema, schema-valid request refused or schema-invalid request accepted.
#
# Everything runs on loopback, on ports the kernel picks, in a fresh data directory; the platform
# and everything it started are stopped whatever happens. Needs target/debug/mpegflow and
# mpegflow-worker (`cargo build --workspace --bins`), python3 with venv, ffmpeg, curl.
#
# Env: SCHEMATHESIS_MAX_EXAMPLES (default 100: about 2 minutes on 2 busy cores),
# SCHEMATHESIS_SEED (default 20261130).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

version=4.32.5
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20261130}

# A pinned Schemathesis in a venv under target/, reused while it is the pinned version.
venv=$root/target/schemathesis-venv
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

data=$(mktemp -d /tmp/mpegflow-schemathesis.XXXXXX)
# Traversable by the postgres user and the workers' uids, so `up` keeps everything inside it
# (and removing it removes everything).
chmod 0711 "$data"
up_pid=
child=
# Long steps run in the background and are waited for, so a signal is acted on at once
# (bash runs traps only between foreground commands).
run() {
    "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=
    return $rc
}
stop_platform() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
        # `up` stops its workers, the control plane, the store and PostgreSQL on SIGTERM.
        kill -TERM "$up_pid" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$up_pid" 2>/dev/null || break; sleep 1; done
        # Anything left of its process group (it runs in a session of its own) is killed.
        kill -KILL -- "-$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    # PostgreSQL detaches from the group (pg_ctl starts it in a session of its own): stop a
    # cluster still running under our data directory.
    local pid_file
    for pid_file in $(find "$data" -name postmaster.pid 2>/dev/null); do
        local pg_pid
        pg_pid=$(head -n1 "$pid_file" 2>/dev/null || true)
        [ -n "$pg_pid" ] && kill -QUIT "$pg_pid" 2>/dev/null || true
    done
    rm -rf "$data"
    exit $status
}
trap stop_platform EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every listener on 127.0.0.1, port 0: the kernel picks free ports; `up` writes the API's URL
# to demo.env. A workers' count of 2 keeps the seeding jobs quick on a small machine.
export MPEGFLOW_API_ADDR=127.0.0.1:0 MPEGFLOW_GRPC_ADDR=127.0.0.1:0 MPEGFLOW_S3_ADDR=127.0.0.1:0
export NO_COLOR=1
# Schemathesis creates webhook endpoints with any URL it likes: the platform must neither
# resolve their names nor send them anything (no dispatcher runs).
export MPEGFLOW_DISPATCHER=false MPEGFLOW_WEBHOOK_RESOLVE_NAMES=false
unset DATABASE_URL MPEGFLOW_S3_ENDPOINT MPEGFLOW_API_URL MPEGFLOW_API_KEY
setsid "$root/target/debug/mpegflow" up --data-dir "$data/platform" --no-sample --workers 2 \
    >"$data/up.log" 2>&1 &
up_pid=$!

for _ in $(seq 1 180); do
    grep -q 'serving; press Ctrl-C' "$data/up.log" && break
    if ! kill -0 "$up_pid" 2>/dev/null; then
        echo "schemathesis: mpegflow up exited:" >&2
        cat "$data/up.log" >&2
        exit 1
    fi
    sleep 1
done
if ! grep -q 'serving; press Ctrl-C' "$data/up.log"; then
    echo "schemathesis: mpegflow up did not start in 180 s:" >&2
    cat "$data/up.log" >&2
    exit 1
fi
set -a
# shellcheck disable=SC1091
. "$data/platform/demo.env"
set +a
case "$MPEGFLOW_API_URL" in
http://127.0.0.1:*) ;;
*) echo "schemathesis: the API is not on 127.0.0.1: $MPEGFLOW_API_URL" >&2; exit 1 ;;
esac

# Real resources for the ids in paths: a finished job (with an input asset, an output asset and
# an attempt's stderr), a queued or running job, a pending upload, a webhook endpoint and its
# deliveries. The hooks substitute them
# for generated ids part of the time, so those operations are exercised on existing resources
# too, not only answering 404.
export XDG_CONFIG_HOME=$data/config HOME=$data/home
mkdir -p "$data/home" "$data/seed"
# A webhook endpoint first, so the seeding jobs' events become its deliveries (pending: no
# dispatcher runs, nothing is ever sent).
hook=$(curl -fsS -H "Authorization: Bearer $MPEGFLOW_API_KEY" -H 'Content-Type: application/json' \
    -d '{"url":"https://93.184.216.34/hook","events":["job.started","job.completed","job.progress"]}' \
    "$MPEGFLOW_API_URL/v1/webhooks")
hook_id=$(jq -r '.webhook.id' <<<"$hook")
ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i testsrc2=duration=1:size=160x90:rate=10 \
    -c:v libx264 -preset ultrafast -pix_fmt yuv420p "$data/seed/in.mp4"
run "$root/target/debug/mpegflow" run --json -i in="$data/seed/in.mp4" -o out="$data/seed/out.mp4" \
    -- '-i {{in}} -c:v libx264 -preset ultrafast {{out}}' >"$data/seed/done.json" 2>"$data/seed/run.log" || {
    echo "schemathesis: seeding job failed:" >&2
    cat "$data/seed/run.log" >&2
    exit 1
}
run "$root/target/debug/mpegflow" run --no-wait -i in="$data/seed/in.mp4" -o out="$data/seed/slow.mp4" \
    -- '-stream_loop 100 -i {{in}} -vf scale=1280:720 -c:v libx264 -preset veryslow {{out}}' >"$data/seed/queued.txt" 2>>"$data/seed/run.log" || {
    echo "schemathesis: seeding the second job failed:" >&2
    cat "$data/seed/run.log" >&2
    exit 1
}
pending=$(curl -fsS -H "Authorization: Bearer $MPEGFLOW_API_KEY" -H 'Content-Type: application/json' \
    -d '{"filename":"pending.mp4","size":1000}' "$MPEGFLOW_API_URL/v1/assets")
{
    jq -r '.id' "$data/seed/done.json" | sed 's/^/job /'
    tr -d '[:space:]' <"$data/seed/queued.txt" | sed 's/^/job /'; echo
    jq -r '.inputs[]' "$data/seed/done.json" | sed 's/^/ready_asset /'
    jq -r '.outputs[].files[].asset_id' "$data/seed/done.json" | sed 's/^/asset /'
    jq -r '.id' <<<"$pending" | sed 's/^/asset /'
    echo "webhook $hook_id"
    curl -fsS -H "Authorization: Bearer $MPEGFLOW_API_KEY" "$MPEGFLOW_API_URL/v1/webhooks/$hook_id/deliveries" |
        jq -r '.deliveries[].id' | sed 's/^/delivery /'
} >"$data/seed/ids"
export MPEGFLOW_SCHEMATHESIS_IDS=$data/seed/ids

cd "$data"
start=$(date +%s)
status=0
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=$root/scripts
run "$venv/bin/schemathesis" --no-color --config-file "$root/scripts/schemathesis.toml" run \
    "$MPEGFLOW_API_URL/openapi.json" \
    --url "$MPEGFLOW_API_URL" \
    --header "Authorization: Bearer $MPEGFLOW_API_KEY" \
    --checks all \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --workers 1 \
    --generation-database none \
    --continue-on-failure || status=$?
echo "schemathesis: ${max_examples} examples per operation, seed ${seed}, $(($(date +%s) - start)) s"
if [ $status != 0 ]; then
    echo "schemathesis: FAILED (status $status); the platform's log:" >&2
    tail -n 50 "$data/up.log" >&2
fi
exit $status
