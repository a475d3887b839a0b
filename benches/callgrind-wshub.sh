#!/bin/sh
# A --server-bin for the fan-out harness that runs wshub under callgrind, so that one fixed
# workload gives instruction counts, which do not depend on how busy the machine is (CPU time in
# a rate-limited run does: the server writes as soon as something is queued). The profile of the
# whole process, start-up and shutdown included, goes to $CALLGRIND_OUT when the harness stops
# the server. The binary is $WSHUB_PROFILED_BIN, else target/release/wshub beside this script.
#
#   cargo build --release
#   CALLGRIND_OUT=/tmp/on.out cargo bench --bench fanout -- --server-bin benches/callgrind-wshub.sh \
#       --clients 200 --publishers 4 --rate 400 --size 64 --duration 4 --room bench
#   python3 benches/callgrind_functions.py /tmp/on.out 'wshub::history'
exec valgrind --tool=callgrind --callgrind-out-file="${CALLGRIND_OUT:-callgrind.out.%p}" \
    "${WSHUB_PROFILED_BIN:-$(dirname "$0")/../target/release/wshub}" "$@"
