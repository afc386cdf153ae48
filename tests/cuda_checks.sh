#!/bin/sh
# tests/cuda_checks.sh - `run ... --device cuda` against the CPU through the command line (make
# cuda-test runs it on a GPU after test_kernels and test_device):
#   the bundled models' held-out perplexity (tests/fixtures/bundled/heldout_ids.safetensors), equal
#   within 1e-4 relative; greedy generation of 64 tokens as text, with and without --mtp, identical;
#   a two-turn chat identical; then compute-sanitizer memcheck and racecheck on the quick runs.
# Prints one OK / NOT OK line per check; exits 1 when any is NOT OK.
R=${RUN:-build/cuda/run}
IDS=tests/fixtures/bundled/heldout_ids.safetensors
fail=0
ok() { echo "OK     $1"; }
bad() { echo "NOT OK $1"; fail=1; }
nll() { "$R" ppl "$@" --ids-file $IDS 2>/dev/null | sed -n 's/.*mean NLL \([0-9.]*\).*/\1/p'; }
for m in models/kjv-v3 models/kjv-v3-fp8; do
    c=$(nll $m) g=$(nll $m --device cuda)
    if [ -n "$c" ] && awk -v c="$c" -v g="$g" 'BEGIN { r = (g - c) / c; if (r < 0) r = -r; exit !(r <= 1e-4) }'; then
        ok "ppl $m: mean NLL C $c, cuda $g (tol 1e-4 relative)"
    else bad "ppl $m: mean NLL C '$c', cuda '$g'"; fi
    gen="generate $m -p \"And God said\" -n 64 --temp 0 --ignore-eos"
    c=$(eval "$R" $gen 2>/dev/null) g=$(eval "$R" $gen --device cuda 2>/dev/null) t=$(eval "$R" $gen --device cuda --mtp 2>/dev/null)
    if [ -n "$c" ] && [ "$c" = "$g" ]; then ok "$m: 64 greedy tokens as text, cuda = C"; else bad "$m: greedy text differs: C '$c' / cuda '$g'"; fi
    if [ -n "$c" ] && [ "$c" = "$t" ]; then ok "$m: --mtp greedy on cuda = C plain greedy"; else bad "$m: --mtp on cuda differs: '$t'"; fi
    chat="printf 'Who was Moses?\nAnd Aaron?\n' | $R chat $m -n 24 --temp 0"
    c=$(eval "$chat" 2>/dev/null) g=$(eval "$chat --device cuda" 2>/dev/null)
    if [ -n "$c" ] && [ "$c" = "$g" ]; then ok "$m: two-turn chat, cuda = C"; else bad "$m: chat differs: C '$c' / cuda '$g'"; fi
done
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        for b in "build/cuda/test_kernels --quick" "build/cuda/test_device --quick"; do
            out=$(compute-sanitizer --tool $tool --error-exitcode 9 $b 2>&1)
            rc=$?
            summary=$(echo "$out" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1)
            if [ $rc -eq 0 ]; then ok "compute-sanitizer $tool $b: $summary"; else bad "compute-sanitizer $tool $b (rc $rc): $summary"; echo "$out" | tail -20; fi
        done
    done
else bad "compute-sanitizer not found"; fi
[ $fail -eq 0 ] && echo "cuda_checks: all OK" || echo "cuda_checks: NOT OK"
exit $fail
