#!/usr/bin/env bash
# Installs what is missing, builds Release into build/, and runs the main job:
# the quickstart (a small ResNet on Fashion-MNIST, every GEMM operand in MXSF
# with 8x8 tiles, one epoch, about 2-3 minutes on 2 cores).
# Extra arguments go to `mxtrain train`, e.g. scripts/run.sh --set quant.format=bf16
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$SECONDS
mx_install_deps
mx_build build Release
cd "$MX_ROOT"
./build/mxtrain version
./build/mxtrain train configs/quickstart.ini "$@"
echo "run.sh: done in $((SECONDS - start)) s; open runs/quickstart/report.html (metrics: runs/quickstart/metrics.csv)"
