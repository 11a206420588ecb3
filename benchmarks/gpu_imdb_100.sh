#!/usr/bin/env bash
# Issue 23's comparison table from the user's own command on full data: `hpo optimize --study imdb
# --trials 100` (with artifacts.keep_best = 5, so that the top-5 ensemble exists), then
# benchmarks/ensemble.py on that study: single best vs top-3 vs top-5 vs NB-SVM vs TF-IDF + LR on
# one split, with standard errors. On the 2-core CPU the study costs ~330 core-minutes; on the lent
# GPU machine it runs as one prepared call:
#
#   OUT=/tmp/gpu-imdb bash benchmarks/gpu_imdb_100.sh               # the real run (a GPU; 435 s on the H200, 2026-12-04)
#   OUT=/tmp/gpu-imdb SMALL=1 bash benchmarks/gpu_imdb_100.sh       # a rehearsal on a CPU (57 s on 2 cores)
#
# BUDGET (seconds, default 560) bounds the whole run: the study stops starting trials early enough
# for the running ones and the table to finish; a study cut short is reported as what it is (the
# table names its trial count), never padded.
BUDGET=${BUDGET:-560}
TRIALS=${TRIALS:-100}
JOBS=${JOBS:-12}
source "$(dirname "$0")/gpu_common.sh"

WORK=${WORK:-/tmp/gpu-imdb}
mkdir -p "$WORK"
DB=$WORK/gpu-${NAME:-imdb}.db
export HPO_CACHE_DIR=$WORK/cache
trap 'gzip -c "$DB" > "$OUT/$(basename "$DB").gz" 2>/dev/null' EXIT  # study databases are not committed
NAME=${NAME:-imdb}
SETS=(--set artifacts.keep_best=5 --set name=$NAME ${EXTRA_SETS:-})  # EXTRA_SETS: more "--set KEY=VALUE", space-separated
if [ -n "${SMALL:-}" ]; then
    SETS+=(--set data.max_train=400 --set data.max_valid=200 --set data.max_test=200 --set model.embedding_dim=32
           --set model.hidden_size=32 --set train.max_epochs=2 --set data.max_len=200)
    TRIALS=${TRIALS_SMALL:-7}
fi

describe_machine 2>&1 | tee "$OUT/machine.txt"

# After the study: the ensemble's exports and predictions, both baselines and the report (~100 s
# on 16 cores); before its end the running trials finish (RESERVE, ~5 epochs with JOBS sharing the GPU).
POST=${POST:-110}
RESERVE=${RESERVE:-70}
STUDY_TIME=$(( $(left) - POST - RESERVE ))
stamp "optimize: $TRIALS trials, $JOBS worker processes, no new trial after ${STUDY_TIME} s"
timeout -s INT $(( $(left) - POST )) python3 -m hpo.cli optimize --study imdb --trials "$TRIALS" --jobs "$JOBS" \
    --storage "sqlite:///$DB" --timeout "$STUDY_TIME" "${SETS[@]}" 2>&1 \
    | grep --line-buffered -v "epoch [0-9]*/[0-9]*: [0-9]*%" | tee "$OUT/optimize.log"

FINISHED=$(python3 - "$DB" "$NAME" <<'EOF'
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[2], storage=f"sqlite:///{sys.argv[1]}")
print(sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials))
EOF
)
stamp "ensemble and baselines on the study's $FINISHED finished trials"
python3 benchmarks/ensemble.py --study imdb "${SETS[@]}" --trials "$FINISHED" --storage "sqlite:///$DB" \
    --out "$OUT" --name "$NAME-ensemble.txt" 2>&1 | tail -n 40
stamp "report"
hpo report --study "$NAME" --storage "sqlite:///$DB" > "$OUT/report.txt" 2>&1
stamp "done"
