# The launch and packing shared by gpu_run4.sh to gpu_run7.sh, sourced by them after they set their recipe:
#   . examples/recall_training/gpu_launch.sh NAME RECIPE-OPTIONS...
# Trains ARCH (all, one, or a comma-separated list, which may name --variant runs of the recipe) with the recipe into
# $OUT/NAME, writes $OUT/NAME/RESULTS.md, then leaves at most five files: $OUT/RESULTS.md, $OUT/NAME.log (the
# launcher's output), $OUT/NAME-results.tgz (results.json, train.log, configs, tokenizers, RESULTS.md) and
# $OUT/NAME-models.tgz.aa (+ .ab: the weights in 15 MiB parts; join with cat), and removes the folder (a call returns
# 8 files at most). Reads OUT, ARCH, MINUTES, EVAL_MINUTES, DEADLINE_MINUTES, EVAL_RECORDS (evaluated with the PyTorch
# reference ops), and for smoke runs PYTHON, PARALLEL, DEVICE, WORKERS, EXTRA_ARGS. No command stops it.
# A run longer than one call: CALL_MINUTES=M trains M minutes of MINUTES, then packs DEST/train_state.pt with the
# weights (the models archive) instead of evaluating. The next call carries both archives, unpacks them
# (tar xzf NAME-results.tgz; cat NAME-models.tgz.* | tar xzf -) and sets RESUME to the unpacked DEST (NAME, or
# NAME/ARCH for one architecture), with the same recipe; it evaluates once MINUTES are spent.
: "${OUT:?OUT must name the output folder}"
EVAL_RECORDS=${EVAL_RECORDS:-4,8,16,24,32,48}
NAME=$1
shift
PY=${PYTHON:-python3}
PARALLEL=${PARALLEL---parallel}
RUN=$OUT/$NAME
mkdir -p "$RUN"
T0=$(date +%s)
EXTRA=($EXTRA_ARGS)  # smoke runs only, e.g. "--tokens-per-batch 2048 --eval-documents 4"
[ -n "$DEVICE" ] && EXTRA+=(--device "$DEVICE")
[ -n "$WORKERS" ] && EXTRA+=(--workers "$WORKERS")
[ -n "$CALL_MINUTES" ] && EXTRA+=(--call-minutes "$CALL_MINUTES")
[ -n "$RESUME" ] && EXTRA+=(--resume "$RESUME")
case $ARCH in all|*,*) DEST=$RUN ;; *) DEST=$RUN/$ARCH ;; esac
LIMIT=$(awk -v m="$DEADLINE_MINUTES" 'BEGIN { printf "%d", m * 60 + 45 }')  # the launcher's own deadline, and then some
echo "[$NAME] $(date -u +%FT%TZ) arch=$ARCH minutes=$MINUTES eval=$EVAL_MINUTES deadline=$DEADLINE_MINUTES"
timeout -k 15 "$LIMIT" "$PY" examples/train_recall.py --arch "$ARCH" $PARALLEL --out "$DEST" \
  --minutes "$MINUTES" --eval-minutes "$EVAL_MINUTES" --deadline-minutes "$DEADLINE_MINUTES" \
  "$@" --eval-records "$EVAL_RECORDS" --eval-ops reference "${EXTRA[@]}" 2>&1 | tee "$OUT/$NAME.log"
echo "[$NAME] training and evaluation: $(( $(date +%s) - T0 )) s"

"$PY" examples/train_recall.py --summarize "$RUN" --write "$RUN/RESULTS.md" > /dev/null 2>> "$OUT/$NAME.log"
cp "$RUN/RESULTS.md" "$OUT/RESULTS.md" 2>> "$OUT/$NAME.log"
tar czf "$OUT/$NAME-results.tgz" -C "$OUT" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' "$NAME" 2>> "$OUT/$NAME.log"
pack_models() {  # the weights (and a paused run's train_state.pt) in 15 MiB parts (each returned file may hold 16 MiB)
  rm -f "$OUT/$NAME"-models.tgz.*
  (cd "$OUT" && find "$NAME" \( -name '*.safetensors' -o -name '*.pt' \) | grep -v "$1" | sort | tar czf - -T -) \
    | split -b 15m - "$OUT/$NAME-models.tgz."
}
pack_models '^$'
if [ "$(ls "$OUT/$NAME"-models.tgz.* 2>/dev/null | wc -l)" -gt 2 ]; then
  echo "[$NAME] weights over 30 MiB compressed: packing them without the Llama baseline's" | tee -a "$OUT/$NAME.log"
  pack_models '/llama/'
fi
rm -rf "$RUN"
echo "[$NAME] done in $(( $(date +%s) - T0 )) s; files:"; ls -la "$OUT"
cat "$OUT/RESULTS.md"
