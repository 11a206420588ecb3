#!/usr/bin/env bash
# The seed's head-rate sweep (benchmarks/seed_sweep.py) at imdb-seed's own encoder size, 200/256 x2,
# on the lent GPU machine in one prepared run; on the CPU it ran with a 100/128 x1 encoder.
#
#   OUT=/tmp/sweep bash benchmarks/gpu_seed_sweep.sh            # the real run (a GPU; ~7 min)
#   OUT=/tmp/sweep SMALL=1 bash benchmarks/gpu_seed_sweep.sh    # a rehearsal on a CPU
#
# Every run trains to the end of its 14 epochs (divergence.action=record) on a training subset
# (TRAIN reviews, default 6,000), 5 head rates x 3 seeds, JOBS worker processes sharing the GPU.
# The study's database comes back in $OUT, for seed_sweep.py to read where the run is over.
BUDGET=${BUDGET:-420}
JOBS=${JOBS:-8}
source "$(dirname "$0")/gpu_common.sh"

WORK=${WORK:-/tmp/gpu-seed}
mkdir -p "$WORK"
DB=$WORK/gpu-seed.db
trap 'cp "$DB" "$OUT/" 2>/dev/null' EXIT
SPEC=studies/imdb-seed.toml
RATES=${RATES:-"1e-2, 3e-2, 1e-1, 3e-1, 1.0"}
SETS=(--set data.max_train=${TRAIN:-6000} --set data.max_valid=${VALID:-1500} --set data.max_test=${VALID:-1500}
      --set divergence.action=record --set "space.lr_head={ type = \"categorical\", choices = [$RATES] }")
if [ -n "${SMALL:-}" ]; then
    SETS=(--set data.max_train=300 --set data.max_valid=100 --set data.max_test=100 --set divergence.action=record
          --set pretrain.epochs=1 --set model.embedding_dim=32 --set model.hidden_size=32 --set train.max_epochs=4
          --set train.cycles=2 --set "space.lr_head={ type = \"categorical\", choices = [1e-2, 1.0] }"
          --set "space.seed={ type = \"categorical\", choices = [0] }")
fi

describe_machine 2>&1 | tee "$OUT/machine.txt"

stamp "pretrain"
hpo pretrain --study "$SPEC" --storage "sqlite:///$DB" "${SETS[@]}" 2>&1 | grep -v "%, train loss" | tee "$OUT/pretrain.log"
TRIALS=$(( $(echo "$RATES" | tr ',' '\n' | wc -l) * 3 ))  # every (head rate, seed) pair of the grid
[ -n "${SMALL:-}" ] && TRIALS=2
stamp "optimize: the grid's $TRIALS runs, $JOBS worker processes"
timeout -s INT $(( $(left) - 15 )) python3 -m hpo.cli optimize --study "$SPEC" --trials "$TRIALS" --jobs "$JOBS" \
    --storage "sqlite:///$DB" "${SETS[@]}" 2>&1 | grep -v "epoch [0-9]*/[0-9]*: [0-9]*%" | tee "$OUT/optimize.log"
stamp "done"
