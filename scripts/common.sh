# Shared by run.sh and test.sh: install missing Debian packages, build a tree.
set -euo pipefail

MX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MX_PACKAGES=(gcc make cmake pkg-config libopenblas-openmp-dev libhdf5-dev libstb-dev check
             libinih-dev zlib1g-dev libcjson-dev libdnnl-dev libopenmpi-dev openmpi-bin dataset-fashion-mnist)

# mx_install_deps [extra packages...]
mx_install_deps() {
    local missing=() p
    for p in "${MX_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "deps: all $((${#MX_PACKAGES[@]} + $#)) packages present"
        return 0
    fi
    echo "deps: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# mx_build DIR BUILD_TYPE [cmake args...]
mx_build() {
    local dir="$1" type="$2"
    shift 2
    cmake -S "$MX_ROOT" -B "$MX_ROOT/$dir" -DCMAKE_BUILD_TYPE="$type" "$@" >/dev/null
    cmake --build "$MX_ROOT/$dir" -j "$(nproc)"
}
