#!/usr/bin/env bash
# Installs what is missing, builds and runs the whole ctest suite, then does
# the same in a second tree built with AddressSanitizer + UBSan.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$SECONDS
mx_install_deps

echo "== Release build (build/)"
mx_build build Release
(cd "$MX_ROOT/build" && ctest --output-on-failure)

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build (build-asan/)"
mx_build build-asan RelWithDebInfo -DMXTRAIN_SANITIZE=ON
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$MX_ROOT/tests/lsan.supp"
(cd "$MX_ROOT/build-asan" && ctest --output-on-failure)

echo "== fuzz harnesses, a short run each (scripts/fuzz.sh SECONDS for longer)"
"$MX_ROOT/scripts/fuzz.sh" "${MX_FUZZ_SECONDS:-10}"

echo "test.sh: both builds and the fuzzers passed in $((SECONDS - start)) s"
