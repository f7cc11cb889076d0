#!/usr/bin/env bash
# Fashion-MNIST's IDX files for the tests that read the real data (tests/test_idx.py, `--data fashion-mnist`).
#
#   bash .ci/fashion-mnist.sh   # installs Debian's dataset-fashion-mnist if missing (as root, with apt), then lists it
#
# The package puts the four gzipped IDX files in /usr/share/datasets/fashion-mnist (about 30 MB). Exits non-zero
# when they cannot be had; .ci/run then fails on CI (CI=true) and otherwise lets those tests skip.
set -euo pipefail

DIR=/usr/share/datasets/fashion-mnist

have() {
    [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/train-labels-idx1-ubyte.gz" ] \
        && [ -f "$DIR/t10k-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ]
}

if ! have; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "fashion-mnist.sh: installing dataset-fashion-mnist from the OS packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >&2
    fi
fi
have || { echo "fashion-mnist.sh: dataset-fashion-mnist is not installed (need root and apt-get)" >&2; exit 1; }
echo "fashion-mnist.sh: $(du -sh "$DIR" | cut -f1) of IDX files in $DIR" >&2
