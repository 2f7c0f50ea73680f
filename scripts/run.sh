#!/usr/bin/env bash
# Installs what is missing, builds Release into build/, runs the main job.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$SECONDS
mx_install_deps
mx_build build Release
cd "$MX_ROOT"
./build/mxtrain --help
./build/mxtrain version
echo "run.sh: done in $((SECONDS - start)) s"
