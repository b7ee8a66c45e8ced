#!/usr/bin/env bash
# One-step install on a fresh Debian/Ubuntu machine: system GL libraries for off-screen MuJoCo
# rendering (EGL, with OSMesa as fallback), then a virtual environment in .venv with the CPU build of
# PyTorch and this project with its test tools.
#
#   ./install.sh            # system packages (needs root or sudo) + .venv
#   SKIP_APT=1 ./install.sh # only the Python part (GL libraries already installed)
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${SKIP_APT:-0}" != "1" ]]; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends libegl1 libgl1 libgl1-mesa-dri libosmesa6 libusb-1.0-0 \
        chromium >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU wheel here; a bare requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[dev]"
echo "installed: activate with 'source .venv/bin/activate'"
