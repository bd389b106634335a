#!/usr/bin/env bash
# Run 4 of the recall training (issue 6): all five architectures at once on one GPU, two phases (NOTES.md, "Run 4").
# The GPU call, from the repository root (about 9 minutes; the device allows 10):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run4.sh
#
# Writes the runs under $OUT/run4 (one folder per architecture, RESULTS.md), then packs them into at most three
# files and removes the folder (a call returns 8 files at most): $OUT/run4-results.tgz (results.json, train.log,
# configs, tokenizers, RESULTS.md), $OUT/run4-models.tgz.aa (+ .ab: the weights in 15 MiB parts; join with cat),
# plus $OUT/RESULTS.md and $OUT/run4.log. No command stops the script.
#
# A CPU smoke run of the same recipe with tiny budgets (architectures one after the other; the deadline covers all):
#   OUT=/tmp/smoke PYTHON=/work/venv/bin/python DEVICE=cpu WORKERS=0 PARALLEL= MINUTES=0.3 EVAL_MINUTES=0.2 \
#       DEADLINE_MINUTES=8 EVAL_RECORDS=2,4 EXTRA_ARGS="--tokens-per-batch 2048 --eval-documents 4 --log-every 5" \
#       bash examples/recall_training/gpu_run4.sh
set +e
PY=${PYTHON:-python3}
: "${OUT:?OUT must name the output folder}"
ARCH=${ARCH:-all}
MINUTES=${MINUTES:-5.5}
EVAL_MINUTES=${EVAL_MINUTES:-1.2}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-7.8}   # after the launch: stops any child still running, then the table
EVAL_RECORDS=${EVAL_RECORDS:-4,8,16,24,32,48}
PARALLEL=${PARALLEL---parallel}
RUN=$OUT/run4
mkdir -p "$RUN"
T0=$(date +%s)

# Phase 1 (first 40% of the time): the first GPU run's recipe, which learned recall fastest: JRT rows supervised on
# every token with the second-copy loss (dense recall), full-loss plain and question-first rows, curriculum from one
# record. Phase 2: answer-only question-first and JRT rows on documents up to 48 / 40 records, where plain recall
# fails, plain rows kept (recall itself), no second-copy loss.
RECIPE=(
  --mix plain=0.3,jrt=0.4,question_first=0.3 --records plain=1-32,jrt=1-16,question_first=1-32
  --answer-only none --recall-weight 1.0 --plain-questions 4 --start-level 0.03 --floor-from 0.4 --warmup 100
  --phase2-from 0.4 --phase2-mix plain=0.3,jrt=0.3,question_first=0.4
  --phase2-records plain=1-32,jrt=4-40,question_first=4-48 --phase2-answer-only jrt,question_first
  --phase2-recall-weight 0
  --buckets 64,128,192,256,320,384,512,640,768,1024,1280,1536,2048,2560,3072
  --eval-records "$EVAL_RECORDS" --eval-ops reference
)
EXTRA=($EXTRA_ARGS)  # smoke runs only, e.g. "--tokens-per-batch 2048 --eval-documents 4"
[ -n "$DEVICE" ] && EXTRA+=(--device "$DEVICE")
[ -n "$WORKERS" ] && EXTRA+=(--workers "$WORKERS")
if [ "$ARCH" = all ]; then DEST=$RUN; else DEST=$RUN/$ARCH; fi
LIMIT=$(awk -v m="$DEADLINE_MINUTES" 'BEGIN { printf "%d", m * 60 + 45 }')  # the launcher's own deadline, and then some
echo "[run4] $(date -u +%FT%TZ) arch=$ARCH minutes=$MINUTES eval=$EVAL_MINUTES deadline=$DEADLINE_MINUTES"
timeout -k 15 "$LIMIT" "$PY" examples/train_recall.py --arch "$ARCH" $PARALLEL --out "$DEST" \
  --minutes "$MINUTES" --eval-minutes "$EVAL_MINUTES" --deadline-minutes "$DEADLINE_MINUTES" \
  "${RECIPE[@]}" "${EXTRA[@]}" 2>&1 | tee "$OUT/run4.log"
echo "[run4] training and evaluation: $(( $(date +%s) - T0 )) s"

"$PY" examples/train_recall.py --summarize "$RUN" --write "$RUN/RESULTS.md" > /dev/null 2>> "$OUT/run4.log"
cp "$RUN/RESULTS.md" "$OUT/RESULTS.md" 2>> "$OUT/run4.log"
tar czf "$OUT/run4-results.tgz" -C "$OUT" --exclude='*.safetensors' --exclude='*.bin' run4 2>> "$OUT/run4.log"
pack_models() {  # the weights in 15 MiB parts (each returned file may hold 16 MiB)
  rm -f "$OUT"/run4-models.tgz.*
  (cd "$OUT" && find run4 -name '*.safetensors' | grep -v "$1" | sort | tar czf - -T -) \
    | split -b 15m - "$OUT/run4-models.tgz."
}
pack_models '^$'
if [ "$(ls "$OUT"/run4-models.tgz.* 2>/dev/null | wc -l)" -gt 2 ]; then
  echo "[run4] weights over 30 MiB compressed: packing them without the Llama baseline's" | tee -a "$OUT/run4.log"
  pack_models '/llama/'
fi
rm -rf "$RUN"
echo "[run4] done in $(( $(date +%s) - T0 )) s; files:"; ls -la "$OUT"
cat "$OUT/RESULTS.md"
