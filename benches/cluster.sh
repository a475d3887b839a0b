#!/usr/bin/env bash
# Runs the fan-out harness against two wshub instances joined through Redis (SPEC §10): one
# redis-server and two `wshub --redis --protocol raw` on free loopback ports, the publishers on
# instance A and the other clients split between A and B, so every message crosses Redis.
#
# usage: benches/cluster.sh [harness options]
#
#   default options: scenario (a), --clients 1000 --publishers 10 --rate 1600 --size 64 --duration 10
#   scenario (e):    benches/cluster.sh --clients 19000 --publishers 1 --rate 1 --size 64 --duration 10
#   (see cargo bench --bench fanout -- --help; --url, --server-pid, --watch-pid and --harness-core
#   are set here)
#
# Environment:
#   WSHUB_BIN       the wshub binary (default target/release/wshub, built by this script)
#   REDIS_SERVER    the redis-server binary (default redis-server; Debian package redis-server)
#   CORE_A, CORE_REDIS, CORE_B, CORE_HARNESS
#                   the core of each process (default 0, 0, 1, 1). On 2 cores: instance A takes
#                   every publish and Redis relays it, both on core 0; instance B and the harness,
#                   which reads every delivery, on core 1.
#   MAX_CONNECTIONS --max-connections of each instance (default 19900: the most one process holds
#                   under an open-file limit of 20 000)
#   JSON=1          print the harness's JSON object instead of text
#   KEEP_LOGS=1     keep the processes' logs (in a temporary directory, printed at the end)
#
# The harness prints deliveries per instance, CPU per wshub pid, the servers' sum and Redis's,
# each also per delivery; it exits with status 1 if any client received a message twice.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR
readonly CORE_A="${CORE_A:-0}"
readonly CORE_REDIS="${CORE_REDIS:-0}"
readonly CORE_B="${CORE_B:-1}"
readonly CORE_HARNESS="${CORE_HARNESS:-1}"
readonly MAX_CONNECTIONS="${MAX_CONNECTIONS:-19900}"
readonly REDIS_SERVER="${REDIS_SERVER:-redis-server}"
# How long each process may take to start answering.
readonly STARTUP_TRIES=100 STARTUP_STEP=0.1

log() { echo "cluster.sh: $*" >&2; }

LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/wshub-cluster.XXXXXX")"
readonly LOG_DIR
PIDS=()

cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 || ${KEEP_LOGS:-0} == 1 ]]; then
        log "logs kept in $LOG_DIR"
    else
        rm -rf "$LOG_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nobody listens on right now; the process started on it may still lose a race, which
# `wait_until` then reports as an early exit.
free_port() {
    local port attempt
    for ((attempt = 0; attempt < 50; attempt++)); do
        port=$((20000 + RANDOM % 20000))
        if ! listening "$port"; then
            echo "$port"
            return
        fi
    done
    log "no free port found"
    exit 1
}

# Whether Redis on port $1 answers PING. (A subshell: the connection and its descriptor end
# with it.)
redis_ready() (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'PING\r\n' >&3
    read -r -t 1 reply <&3
    [[ $reply == "+PONG"* ]]
)

# Whether wshub on port $1 answers /healthz with `ok`: up, and connected to Redis (SPEC §10;
# `degraded: redis unavailable` otherwise).
wshub_ready() (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    response="$(timeout 1 cat <&3 || true)"
    [[ ${response#*$'\r\n\r\n'} == ok* ]]
)

# wait_until NAME PID CHECK PORT: waits until `CHECK PORT` succeeds while PID lives.
wait_until() {
    local name=$1 pid=$2 check=$3 port=$4 try
    for ((try = 0; try < STARTUP_TRIES; try++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up:"
            tail -n 20 "$LOG_DIR/$name.log" >&2
            exit 1
        fi
        if "$check" "$port" 2>/dev/null; then
            return
        fi
        sleep "$STARTUP_STEP"
    done
    log "$name (pid $pid) did not become ready on port $port:"
    tail -n 20 "$LOG_DIR/$name.log" >&2
    exit 1
}

cd "$REPO_DIR"
if [[ -z ${WSHUB_BIN:-} ]]; then
    cargo build -q --release --bin wshub
    WSHUB_BIN="$REPO_DIR/target/release/wshub"
fi
readonly WSHUB_BIN
# Compiled before any server starts, so the build does not compete with them.
cargo bench -q --no-run --bench fanout
command -v "$REDIS_SERVER" >/dev/null || {
    log "$REDIS_SERVER not found (apt-get install redis-server)"
    exit 1
}
ulimit -n "$(ulimit -Hn)"

REDIS_PORT="$(free_port)"
taskset -c "$CORE_REDIS" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save '' --appendonly no --daemonize no --loglevel warning >"$LOG_DIR/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_until redis "$REDIS_PID" redis_ready "$REDIS_PORT"

# start_wshub NAME CORE: starts one instance; sets PORT and PID.
start_wshub() {
    local name=$1 core=$2
    PORT="$(free_port)"
    # The harness's own flags for a started wshub (benches/fanout/server.rs), so that one
    # instance and two are measured alike.
    taskset -c "$core" "$WSHUB_BIN" --listen "127.0.0.1:$PORT" --protocol raw \
        --redis "redis://127.0.0.1:$REDIS_PORT" --instance-id "bench-$name" \
        --max-connections "$MAX_CONNECTIONS" --max-message-size 1MiB --max-buffered 64MiB \
        --handshake-timeout 60s --log-level warn </dev/null >"$LOG_DIR/$name.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_until "$name" "$PID" wshub_ready "$PORT"
}
start_wshub a "$CORE_A"
PORT_A=$PORT PID_A=$PID
start_wshub b "$CORE_B"
PORT_B=$PORT PID_B=$PID
log "redis pid $REDIS_PID on core $CORE_REDIS; wshub a pid $PID_A on core $CORE_A," \
    "b pid $PID_B on core $CORE_B; harness on core $CORE_HARNESS"

[[ $# -gt 0 ]] || set -- --clients 1000 --publishers 10 --rate 1600 --size 64 --duration 10
extra=()
[[ ${JSON:-0} == 1 ]] && extra+=(--json)
cargo bench -q --bench fanout -- \
    --url "ws://127.0.0.1:$PORT_A/ws" --url "ws://127.0.0.1:$PORT_B/ws" \
    --server-pid "$PID_A" --server-pid "$PID_B" --watch-pid "redis=$REDIS_PID" \
    --harness-core "$CORE_HARNESS" "$@" "${extra[@]}"
