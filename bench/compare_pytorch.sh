#!/usr/bin/env bash
# Side-by-side training-step times: mxtrain's `bench step` and PyTorch's
# ../shared/peers/torch_step.py (Debian python3-torch + python3-torchvision),
# run alternately in one session for the same model, batch and threads, with
# the machine's sgemm and memcpy ceilings measured in the same run.
#
#   bench/compare_pytorch.sh [MODEL] [BATCH] [THREADS] [STEPS] [ROUNDS]
#   MODEL: resnet18_cifar (default) | deit_tiny_cifar
#
# Prints one line per measurement and a summary with medians and ratios
# (mxtrain / PyTorch: below 1 means mxtrain is faster).
#
# MX_BEFORE=/path/to/an/older/mxtrain adds that binary to every round, run
# alternately with build/mxtrain, and a column with each variant's step time
# against it: the median over rounds of the paired ratio after/before (before/
# after tables of a change, measured side by side).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${1:-resnet18_cifar}" BATCH="${2:-64}" THREADS="${3:-2}" STEPS="${4:-5}" ROUNDS="${5:-3}"
MX="${MX_BIN:-$ROOT/build/mxtrain}"   # MX_BIN: another build to measure
PEER="$ROOT/../shared/peers/torch_step.py"
PY=/usr/bin/python3   # Debian's interpreter: python3-torch lives there
[ -x "$MX" ] || { echo "build first: scripts/run.sh" >&2; exit 1; }
BEFORE="${MX_BEFORE:-}"
[ -z "$BEFORE" ] || [ -x "$BEFORE" ] || { echo "MX_BEFORE=$BEFORE is not an executable" >&2; exit 1; }
[ -f "$PEER" ] || { echo "$PEER not found" >&2; exit 1; }
$PY -c "import torch, torchvision" 2>/dev/null || {
    echo "needs Debian's python3-torch and python3-torchvision (apt-get install python3-torchvision)" >&2; exit 1; }

case "$MODEL" in
  resnet18_cifar) MXARGS=(--model resnet18 --stem cifar --img-size 32) ;;
  deit_tiny_cifar) MXARGS=(--model deit_tiny --img-size 32 --patch 4) ;;
  *) echo "unknown model $MODEL (resnet18_cifar, deit_tiny_cifar)" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS="$THREADS"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# physical limits, same run: sgemm GFLOP/s and memcpy GB/s
"$MX" --threads "$THREADS" bench gemm --n 2048 --reps 5 > "$out/gemm.json"
"$MX" --threads "$THREADS" bench quantize --format bf16 --n 16777216 --reps 5 > "$out/memcpy.json"

variants=("fp32:2d" "mxfp8_e4m3:1d" "mxsf:2d" "mxsf:1d")
for r in $(seq 1 "$ROUNDS"); do
  $PY "$PEER" "$MODEL" "$BATCH" "$THREADS" "$STEPS" | tee -a "$out/torch.txt"
  /usr/bin/time -f "%M" -o "$out/torch_rss_$r" $PY "$PEER" "$MODEL" "$BATCH" "$THREADS" 1 > /dev/null
  for v in "${variants[@]}"; do
    f="${v%%:*}" t="${v##*:}"
    "$MX" --threads "$THREADS" bench step "${MXARGS[@]}" --batch "$BATCH" --format "$f" --tiling "$t" \
        --steps "$STEPS" --warmup 1 | tee -a "$out/mx_${f}_${t}.json"
    [ -z "$BEFORE" ] || "$BEFORE" --threads "$THREADS" bench step "${MXARGS[@]}" --batch "$BATCH" --format "$f" \
        --tiling "$t" --steps "$STEPS" --warmup 1 | tee -a "$out/before_${f}_${t}.json"
  done
done

$PY - "$out" "$MODEL" "$BATCH" "$THREADS" <<'PYEOF'
import json, re, statistics, sys, glob, os
out, model, batch, threads = sys.argv[1:5]
torch = [float(re.search(r"step_s=([0-9.]+)", l).group(1)) for l in open(f"{out}/torch.txt")]
rss = [int(open(p).read().split()[-1]) / 1024 for p in glob.glob(f"{out}/torch_rss_*")]
mem = json.loads(open(f"{out}/memcpy.json").readline())
gemm = json.loads(open(f"{out}/gemm.json").readline())
t_med = statistics.median(torch)
print(f"\n{model}, batch {batch}, {threads} threads; sgemm {gemm['gflop_per_s']:.0f} GFLOP/s, "
      f"memcpy {mem['memcpy_gbps']:.1f} GB/s")
has_before = bool(glob.glob(f"{out}/before_*.json"))
print(f"{'variant':<18} {'step s':>8} {'img/s':>8} {'GFLOP/s':>8} {'RSS MB':>7} {'vs torch':>9} {'vs mx fp32':>10}"
      + (f" {'vs before':>9}" if has_before else ""))
print(f"{'pytorch fp32':<18} {t_med:8.3f} {int(batch)/t_med:8.1f} {'':>8} {statistics.median(rss):7.0f} {1.0:9.2f}")
base = None
for v in ["fp32_2d", "mxfp8_e4m3_1d", "mxsf_2d", "mxsf_1d"]:
    rows = [json.loads(l) for l in open(f"{out}/mx_{v}.json")]
    s = statistics.median(r["median_step_s"] for r in rows)
    base = base or s
    r0 = rows[0]
    extra = ""
    if has_before:
        bs = [json.loads(l)["median_step_s"] for l in open(f"{out}/before_{v}.json")]
        # each round runs both binaries back to back: the median of the paired
        # ratios is robust to the machine's speed drifting between rounds
        pr = statistics.median(r["median_step_s"] / b for r, b in zip(rows, bs))
        extra = f" {pr:9.2f}  (before {statistics.median(bs):.3f} s; paired ratios " + \
                ", ".join(f"{r['median_step_s'] / b:.2f}" for r, b in zip(rows, bs)) + ")"
    print(f"{'mxtrain ' + v:<18} {s:8.3f} {int(batch)/s:8.1f} {r0['gflop_per_step']/s:8.1f} "
          f"{max(r['peak_rss_mb'] for r in rows):7.0f} {s/t_med:9.2f} {s/base:10.2f}" + extra)
PYEOF
