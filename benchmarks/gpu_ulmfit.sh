#!/usr/bin/env bash
# Issue 10's GPU figures in one prepared run: the imdb-ulmfit encoder pretrained as a language
# model, then a fine-tuning study, with the classical baselines measured in the same run.
#
# Written for the lent GPU machine (no network: the Python packages that its image lacks travel
# as wheels in .whl/, see the device notes), and runnable anywhere with `hpo` importable:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_ulmfit.sh                      # the real run
#   OUT=/tmp/gpu SMALL=1 bash benchmarks/gpu_ulmfit.sh              # a 2-minute rehearsal on a CPU
#
# BUDGET (seconds, default 480) bounds the whole run: the study stops starting trials early enough
# for the running ones to finish, and everything measured so far is left in $OUT (the study's
# SQLite database, logs, the report), also when the study is cut short.
BUDGET=${BUDGET:-480}
TRIALS=${TRIALS:-20}
JOBS=${JOBS:-4}
source "$(dirname "$0")/gpu_common.sh"

SPEC=studies/imdb-ulmfit.toml
WORK=${WORK:-/tmp/gpu-ulmfit}
mkdir -p "$WORK"
DB=$WORK/gpu-ulmfit.db  # its artifact folder (encoder, figures) stays beside it; the database comes back
trap 'cp "$DB" "$OUT/" 2>/dev/null' EXIT
SETS=()
if [ -n "${SMALL:-}" ]; then
    SETS=(--set data.max_train=600 --set data.max_valid=200 --set data.max_test=200 --set pretrain.epochs=1
          --set model.embedding_dim=32 --set model.hidden_size=32 --set train.max_epochs=2)
    TRIALS=${TRIALS_SMALL:-3}
fi

describe_machine 2>&1 | tee "$OUT/machine.txt"

# The baselines use the CPU cores only; they run beside the GPU work and finish long before it.
nice python3 benchmarks/baselines.py --study "$SPEC" "${SETS[@]}" --out "$OUT" > "$OUT/baselines.log" 2>&1 &
BASELINES=$!

stamp "pretrain"
hpo pretrain --study "$SPEC" --storage "sqlite:///$DB" "${SETS[@]}" 2>&1 | tee "$OUT/pretrain.log"

# Trials still running when the study stops starting new ones need time to finish: one 4-epoch
# trial is the reserve, guessed from nothing better than the pretraining's speed.
RESERVE=${RESERVE:-120}
STUDY_TIME=$(( $(left) - RESERVE - 30 ))
stamp "optimize: $TRIALS trials, $JOBS worker processes, no new trial after ${STUDY_TIME} s"
if [ "$STUDY_TIME" -gt 30 ]; then
    timeout -s INT $(( $(left) - 30 )) python3 -m hpo.cli optimize --study "$SPEC" --trials "$TRIALS" --jobs "$JOBS" \
        --storage "sqlite:///$DB" --timeout "$STUDY_TIME" "${SETS[@]}" 2>&1 | tee "$OUT/optimize.log"
fi
stamp "report"
hpo report --study imdb-ulmfit --storage "sqlite:///$DB" 2>&1 | tee "$OUT/report.txt"
wait "$BASELINES"
cat "$OUT/baselines.txt" 2>/dev/null || tail -5 "$OUT/baselines.log"
stamp "done"
