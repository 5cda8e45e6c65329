#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU machine lacks, for its Python 3.12 on manylinux x86-64:
# the wheels listed in experiments/gpu/wheels.txt, and Brax built from its main branch (pinned below),
# whose PPO trainer runs on jax >= 0.10. Then check that they fit in the device's carry limit.
#
#   bash experiments/gpu/fetch_wheels.sh [BRAX_SOURCE]
#
# BRAX_SOURCE: a checkout of github.com/google/brax at BRAX_COMMIT; without it the commit is cloned.
# Needs internet; run it here, never on the GPU machine. Then: device run with carry [".whl"].
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=$ROOT/.whl
BRAX_COMMIT=0b96d05
LIMIT=$((64 * 1024 * 1024))  # what one device call carries, the working tree included
PYTHON=${PYTHON:-python3}

mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
    platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" -r "$ROOT/experiments/gpu/wheels.txt"

source_dir=${1:-}
if [ -z "$source_dir" ]; then
    source_dir=$(mktemp -d)
    git clone -q https://github.com/google/brax "$source_dir"
    git -C "$source_dir" checkout -q "$BRAX_COMMIT"
fi
rm -f "$DEST"/brax-*.whl
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST" "$source_dir"

wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git -C "$ROOT" ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "fetch_wheels.sh: $(ls "$DEST"/*.whl | wc -l) wheels, $((wheels / 1024)) KiB; with the tree $(((wheels + tree) / 1024)) KiB of $((LIMIT / 1024)) KiB"
[ $((wheels + tree)) -le $LIMIT ] || { echo "fetch_wheels.sh: over the carry limit"; exit 1; }
