#!/usr/bin/env bash
# Eager vs CUDA-graphed (model.cuda_graphs) training steps of the tiny and small presets, one
# after the other on one GPU, each with its operator profile and host-sync count:
#
#   bash benchmarks/small_steps_suite.sh OUT [compile]
#
# OUT/<run>.log holds each run's output, OUT/<run>/bench_small_steps.json its report and
# OUT/status.txt the exit status of each run. With "compile" a last run adds model.compile to
# the graphed tiny preset. Each run is limited to LIMIT seconds (default 240).
set -u
OUT=${1:-small_steps_suite}
mkdir -p "$OUT"
run() {
    local name=$1
    shift
    timeout -k 10 "${LIMIT:-240}" python benchmarks/bench_small_steps.py --out "$OUT/$name" --device cuda "$@" \
        > "$OUT/$name.log" 2>&1
    echo "$name rc=$?" >> "$OUT/status.txt"
}
TINY=(--steps 150 --warmup 25 --log-every 25 --variants cache_on_device --profile 5)
SMALL=(--preset small --backbone random --frames 17 --size 128 --batch 32 --clips 64 --warmup 10 --steps 40
       --log-every 10 --stages 1 --variants cache_on_device --profile 3)
run tiny "${TINY[@]}"
run tiny_graphs "${TINY[@]}" --cuda-graphs
run small "${SMALL[@]}"
run small_graphs "${SMALL[@]}" --cuda-graphs
if [ "${2:-}" = "compile" ]; then
    run tiny_graphs_compile "${TINY[@]}" --cuda-graphs --compile --stages 1
fi
