#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan, build-fuzz/) and runs
# each for SECONDS (default 60): .npy reader, config parser, IDX dataset
# reader, checkpoint reader, safetensors reader. Corpora grow in build-fuzz/corpus/<name>, seeded
# from tests/fuzz/seeds/<name>; a crash leaves its input in build-fuzz/ and
# fails the script.  scripts/test.sh runs it for a few seconds per harness.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
secs="${1:-60}"
mx_install_deps clang
CC=clang mx_build build-fuzz RelWithDebInfo -DMXTRAIN_FUZZ=ON -DMXTRAIN_CUDA=OFF -DMXTRAIN_NATIVE=OFF
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$MX_ROOT/tests/lsan.supp"
cd "$MX_ROOT/build-fuzz"
for name in npy config idx ckpt safetensors; do
    corpus="corpus/$name"
    mkdir -p "$corpus"
    cp -n "$MX_ROOT/tests/fuzz/seeds/$name/"* "$corpus/" 2>/dev/null || true
    max_len=4096
    [ "$name" = ckpt ] && max_len=64 # edits of 4 bytes (tests/fuzz/fuzz_ckpt.c)
    echo "== fuzz_$name for ${secs}s"
    if ! "./fuzz/fuzz_$name" -max_total_time="$secs" -max_len="$max_len" -rss_limit_mb=3072 -print_final_stats=1 \
        "$corpus" > "fuzz_$name.log" 2>&1; then
        tail -40 "fuzz_$name.log"
        echo "fuzz.sh: fuzz_$name failed (log: build-fuzz/fuzz_$name.log, input: build-fuzz/crash-*)"
        exit 1
    fi
    grep -E "^Done|stat::number_of_executed_units" "fuzz_$name.log" | head -1
done
echo "fuzz.sh: every harness ran ${secs}s without a finding"
