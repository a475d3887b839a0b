#!/usr/bin/env bash
# Runs the fan-out scenarios of BENCHMARKS.md against gorilla/websocket's examples/chat, the Go
# program wshub grew from, built only from Debian packages (no Go module downloads).
#
# usage: benches/gorilla.sh [build | a | b | c | d | e | all]...   (default: all; must run as root
#        the first time, to install packages)
#
#   a  1 000 clients, 10 publishers, 1 600 msg/s, 64 B    -> latency
#   b  1 000 clients, 10 publishers, --rate 0 --window 16 -> deliveries/s at saturation
#   c  10 000 idle clients                                 -> KiB per connection
#   d  1 000 clients, 10 publishers, 200 msg/s, 4 KiB      -> latency and bytes/s
#   e  19 000 clients, 1 publisher, 1 msg/s               -> latency of one broadcast to all
#
# Environment: DURATION (seconds per loaded scenario, default 10); CARGO_TARGET_DIR (the chat is
# built once into $CARGO_TARGET_DIR/gorilla-chat, its log goes there too); JSON=1 for one JSON
# object per scenario.
#
# The chat example caps incoming messages at 512 bytes (maxMessageSize); the build raises that cap
# to 64 KiB so that scenario (d) measures fan-out rather than the cap. Nothing else is changed.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR
readonly TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
readonly CACHE_DIR="$TARGET_DIR/gorilla-chat"
readonly CHAT_BIN="$CACHE_DIR/chat"
readonly DURATION="${DURATION:-10}"
readonly DEB_SRC_FILE=/etc/apt/sources.list.d/wshub-bench-deb-src.sources

log() { echo "gorilla.sh: $*" >&2; }

# Prints deb822 stanzas that mirror every enabled Debian `deb` source of this machine as `deb-src`.
# Only Debian archives are mirrored: third-party repositories often publish no source indexes, and
# a missing index would make `apt-get update` fail.
derive_deb_src() {
    local file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk '$1 == "deb" && /debian/ {
                 printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents:", $2, $3
                 for (i = 4; i <= NF; i++) printf " %s", $i
                 printf "\n\n"
             }' "$file" | sed 's/^URIs: \[[^]]*\] */URIs: /'
    done
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file && $file != "$DEB_SRC_FILE" ]] || continue
        # Paragraph mode: one stanza per record; keep Debian stanzas whose Types include deb.
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             /(^|\n)Types:[^\n]*[[:space:]]deb([[:space:]]|$)/ && /URIs:[^\n]*debian/ &&
             !/(^|\n)Enabled:[[:space:]]*no/ {
                 out = ""
                 n = split($0, lines, "\n")
                 for (i = 1; i <= n; i++) {
                     if (lines[i] ~ /^#/) continue
                     if (lines[i] ~ /^Types:/) lines[i] = "Types: deb-src"
                     out = out lines[i] "\n"
                 }
                 printf "%s", out
                 printf "\n"
             }' "$file"
    done
}

has_deb_src() {
    grep -qsE '^(deb-src[[:space:]]|Types:.*deb-src)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
}

build_chat() {
    if [[ -x $CHAT_BIN ]]; then
        log "using cached $CHAT_BIN"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! has_deb_src; then
        log "adding deb-src sources in $DEB_SRC_FILE"
        derive_deb_src >"$DEB_SRC_FILE"
        [[ -s $DEB_SRC_FILE ]] || { log "no Debian apt source found to derive deb-src from"; exit 1; }
    fi
    apt-get update -q
    # dpkg-dev provides dpkg-source, which `apt-get source` needs to unpack the package.
    apt-get install -y -q golang-go golang-github-gorilla-websocket-dev dpkg-dev

    local work="$CACHE_DIR/build"
    rm -rf "$work"
    mkdir -p "$work"
    (cd "$work" && apt-get source -q golang-github-gorilla-websocket)
    local example
    example="$(find "$work" -type d -path '*/examples/chat' | head -n 1)"
    [[ -n $example ]] || { log "examples/chat not found in the Debian source package"; exit 1; }

    mkdir -p "$work/gopath/src/chat"
    cp "$example"/*.go "$work/gopath/src/chat/"
    rm -f "$work/gopath/src/chat/"*_test.go
    sed -i 's/maxMessageSize = 512$/maxMessageSize = 64 * 1024/' "$work/gopath/src/chat/client.go"
    grep -q 'maxMessageSize = 64 \* 1024' "$work/gopath/src/chat/client.go" \
        || { log "could not raise maxMessageSize in client.go"; exit 1; }
    # GOPATH mode with Debian's Go source tree: the gorilla package comes from
    # /usr/share/gocode; GOPROXY=off guarantees no module is fetched.
    (cd "$work/gopath/src/chat" &&
        GO111MODULE=off GOPROXY=off GOFLAGS='' GOPATH="$work/gopath:/usr/share/gocode" \
            GOCACHE="$CACHE_DIR/go-build" go build -o "$CHAT_BIN" .)
    rm -rf "$work"
    log "built $CHAT_BIN"
}

CHAT_PID=""
CHAT_PORT=""

stop_chat() {
    if [[ -n $CHAT_PID ]]; then
        kill "$CHAT_PID" 2>/dev/null || true
        wait "$CHAT_PID" 2>/dev/null || true
        CHAT_PID=""
CHAT_PORT=""
    fi
}
trap stop_chat EXIT

# Starts a fresh chat server pinned to core 0 (the harness pins itself to core 1) on a random
# free loopback port: other programs on this machine may be using any fixed one.
start_chat() {
    stop_chat
    ulimit -n "$(ulimit -Hn)"
    local attempt i
    for ((attempt = 0; attempt < 20; attempt++)); do
        CHAT_PORT=$((20000 + RANDOM % 20000))
        if (exec 3<>"/dev/tcp/127.0.0.1/$CHAT_PORT") 2>/dev/null; then
            continue # somebody listens there already
        fi
        # The chat logs every failed client; keep it for post-mortems, not on the terminal.
        GOMAXPROCS=1 taskset -c 0 "$CHAT_BIN" -addr "127.0.0.1:$CHAT_PORT" >"$CACHE_DIR/chat.log" 2>&1 &
        CHAT_PID=$!
        for ((i = 0; i < 100; i++)); do
            if ! kill -0 "$CHAT_PID" 2>/dev/null; then
                break # lost the port to someone else: try another
            fi
            if (exec 3<>"/dev/tcp/127.0.0.1/$CHAT_PORT") 2>/dev/null; then
                return
            fi
            sleep 0.1
        done
        stop_chat
    done
    log "could not start the chat server on a free port"
    exit 1
}

run_scenario() {
    local name=$1
    shift
    start_chat
    log "scenario $name: $*"
    local extra=()
    [[ ${JSON:-0} == 1 ]] && extra+=(--json)
    (cd "$REPO_DIR" && cargo bench -q --bench fanout -- \
        --url "ws://127.0.0.1:$CHAT_PORT/ws" --server-pid "$CHAT_PID" "$@" "${extra[@]}")
    stop_chat
}

scenario() {
    case $1 in
    build) ;; # built above, before any scenario
    a) run_scenario a --clients 1000 --publishers 10 --rate 1600 --size 64 --duration "$DURATION" ;;
    b) run_scenario b --clients 1000 --publishers 10 --rate 0 --window 16 --size 64 --duration "$DURATION" ;;
    c) run_scenario c --clients 10000 --publishers 0 --duration 0 ;;
    d) run_scenario d --clients 1000 --publishers 10 --rate 200 --size 4096 --duration "$DURATION" ;;
    e) run_scenario e --clients 19000 --publishers 1 --rate 1 --size 64 --duration "$DURATION" ;;
    all) for s in a b c d e; do scenario "$s"; done ;;
    *)
        log "unknown scenario '$1' (expected build, a, b, c, d, e or all)"
        exit 2
        ;;
    esac
}

build_chat
[[ $# -gt 0 ]] || set -- all
for selector in "$@"; do
    scenario "$selector"
done
