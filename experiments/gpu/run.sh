#!/usr/bin/env bash
# One run on the GPU machine: install the carried wheels and purejaxppo into a temporary site folder,
# print the versions and the device, then run the stages (experiments/gpu/stages.py) into OUTDIR.
#
#   bash experiments/gpu/run.sh OUTDIR [--dry-run] [--stages smoke,ant,sweep,extra] [--deadline SECONDS]
#
# The wheels come from WHEELS (default .whl/, which experiments/gpu/fetch_wheels.sh fills; name .whl
# in the device's carry). Without wheels there, the current Python's packages are used as they are
# (the dry run on a CPU). PYTHON picks the interpreter (default python3). Everything printed also
# goes to OUTDIR/log.txt.
set -uo pipefail
OUT=${1:?usage: run.sh OUTDIR [--dry-run] [--stages ...] [--deadline SECONDS]}
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" || exit 1
exec > >(tee -a "$OUT/log.txt") 2>&1

WHEELS=${WHEELS:-$ROOT/.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE=$(mktemp -d /tmp/purejaxppo-site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
        || { echo "run.sh: installing the carried wheels failed"; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$SITE" "$ROOT" \
        || { echo "run.sh: installing purejaxppo failed"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "run.sh: installed $(ls "$WHEELS"/*.whl | wc -l) carried wheels and purejaxppo into $SITE"
else
    echo "run.sh: no wheels in $WHEELS; using $PYTHON's packages as they are"
fi
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
echo "run.sh: purejaxppo $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no git)'), $(date -u +%FT%TZ)"
cd "$ROOT" && "$PYTHON" experiments/gpu/stages.py "$OUT" "$@"
