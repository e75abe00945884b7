#!/usr/bin/env bash
# Instructions per call, per thread, of one `pinned_layers` mode, counted
# by valgrind's callgrind: the same numbers for the same build whatever
# else the machine is doing (unlike any timing on this noisy VM), so a
# change that removes work shows as such even where the rate is too
# noisy to tell. Spin loops count too: compare the functions listed (the
# transport's send_batch / recv_batch, the engine's), not only the totals.
#
#   tools/callgrind-per-call.sh [MODE] [CALLS]
#
# MODE: a `pinned_layers` mode (`pipeline`, `batched`, `engine-executor`,
# `engine-controller`, `round-trip`; default `pipeline`); CALLS: default
# 400000 (one-time set-up costs then add under 5 instructions a call; 20000
# is plenty for `round-trip`). In `round-trip`, every wait spins rather
# than sleeps (`ORCWIRE_SPIN_FOREVER`): callgrind runs one thread at a
# time, and a lone call's wait that went to sleep would count the sleeping
# path, not the one a round trip takes on two CPUs.
# Needs valgrind (`apt-get install valgrind`); builds the example in
# release mode first. Takes about a minute. Output files stay in a
# temporary directory named at the end, for `callgrind_annotate`.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-pipeline}"
calls="${2:-400000}"
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
cargo build --release -q -p orcwire-tools --example pinned_layers
bin=target/release/examples/pinned_layers
out="$(mktemp -d /tmp/orcwire-callgrind.XXXXXX)"

spin=()
[ "$mode" = round-trip ] && spin=(env ORCWIRE_SPIN_FOREVER=1)
"${spin[@]}" valgrind --tool=callgrind --fair-sched=yes --separate-threads=yes \
  --callgrind-out-file="$out/cg.%p" "$bin" "$calls" 1 "$mode" >"$out/run.txt" 2>"$out/valgrind.txt"

echo "pinned_layers $mode, $calls calls under callgrind ($(grep -o '[0-9.]* M/s' "$out/run.txt" | head -1) there)"
for f in "$out"/cg.*-*; do
  total=$(awk '/^summary:/ {print $2; exit}' "$f")
  per=$((total / calls))
  # Threads that did less than 5 instructions a call are set-up helpers.
  [ "$per" -ge 5 ] || continue
  # Spinning in a wait counts too, and varies with the interleaving:
  # what a side does is its total less `wait_until_then`'s.
  spin=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null \
    | grep -E 'WakeWord::wait_until_then \[' | head -1 | awk '{c=$1; gsub(",", "", c); print c}')
  echo "thread ${f##*-}: $per instructions a call, $(( (total - ${spin:-0}) / calls )) without spin waits"
  # Inclusive counts of the main steps (function entries only, not the
  # annotated source that follows them).
  callgrind_annotate --inclusive=yes "$f" 2>/dev/null \
    | sed -n '/file:function/,/Auto-annotated/p' \
    | grep -E '::(send_batch|recv_batch|call_batch|lead_turn|worker_loop|run_call|send_results|respond|wait_until_then|wait_own|call_sync|endpoint_pipeline_with)( \[|$)' \
    | awk -v n="$calls" '{c=$1; gsub(",", "", c); f=$0; sub(/^[^:]*:/, "", f); sub(/ \[.*/, "", f);
        sub(/.*::/, "", f); printf "  %8.1f  %s\n", c / n, f}' \
    | sort -k1,1nr | awk '!seen[$2]++'
done
echo "(callgrind files: $out)"
