#!/usr/bin/env bash
# Reproduce the default MaskViT predictor for the simulated push task, end to end, on a CPU:
#   1. collect push episodes in simulation          (collect-finetune-data --sim)
#   2. train the per-frame tokenizer                  (train-tokenizer --config tokenizer_cpu)
#   3. train MaskViT over its codes, with 2 blocks   (train-maskvit --config maskvit_cpu --set maskvit.n_blocks=2)
#      then fine-tune it with a new schedule          (train-maskvit --init-from ..., as the shipped model was)
#      then deepen it to the preset's 3 blocks and fine-tune again (the new block starts as the identity)
#      then fine-tune once more without dropout        (--set maskvit.dropout=0)
#   4. export one TorchScript predictor               (export-predictor)
#   5. measure it in closed-loop planning             (mpc-eval --workers 2)
# Every stage resumes where it stopped: run the script again after a crash, a reboot or Ctrl-C.
# Data, checkpoints and logs go under WORK (data/ is git-ignored); the result is WORK/predictor.ts.
#
#   recipes/train_default_model.sh                        # defaults below
#   WORK=/data/mv HOURS=8 TOK_STEPS=20000 MV_STEPS=8000 recipes/train_default_model.sh
#   WORK=/tmp/smoke HOURS=0.02 TOK_STEPS=2 MV_STEPS=2 FT_STEPS=2 DEEP_STEPS=2 NODROP_STEPS=2 EVAL_EPISODES=2 \
#       EVAL_ARGS="--max-steps 1" \
#       recipes/train_default_model.sh               # a minutes-long check that every stage runs
#   GPU users: the same, with more steps; the commands pick CUDA when it is there.
set -euo pipefail

WORK=${WORK:-data/default-model}          # everything this recipe writes
HOURS=${HOURS:-4}                         # simulated robot-hours of exploration (2400 episodes)
TOK_STEPS=${TOK_STEPS:-10000}             # tokenizer optimizer steps (batch 64 frames)
MV_STEPS=${MV_STEPS:-4000}                # MaskViT optimizer steps (batch 32 clips), about 2 h on 2 cores
FT_STEPS=${FT_STEPS:-1500}                # fine-tuning steps at a new learning rate (0: none), about 50 min
DEEP_STEPS=${DEEP_STEPS:-1500}            # fine-tuning steps after deepening to 3 blocks (0: none), about 90 min
NODROP_STEPS=${NODROP_STEPS:-2200}        # fine-tuning steps without dropout (0: none), about 115 min
EPISODES=${EVAL_EPISODES:-30}             # closed-loop evaluation episodes
EVAL_ARGS=${EVAL_ARGS:-}                  # extra mpc-eval arguments, e.g. "--max-steps 5"
BIN=${BIN:-$(dirname "$(command -v mpc-run || echo .venv/bin/mpc-run)")}

mkdir -p "$WORK"
resume_flag() { if compgen -G "$1/step_*.pt" > /dev/null; then echo --resume; fi; }
latest() { ls "$1"/step_*.pt | sort | tail -n 1; }

echo "== 1/5 collect $HOURS simulated hours of push exploration"
collect_resume=""
if [ -f "$WORK/episodes/manifest.json" ]; then collect_resume=--resume; fi
"$BIN/collect-finetune-data" --sim --hours "$HOURS" --out "$WORK/episodes" $collect_resume --no-progress

echo "== 2/5 tokenizer ($TOK_STEPS steps)"
"$BIN/train-tokenizer" --config tokenizer_cpu --data "$WORK/episodes" --out "$WORK/tokenizer" \
    --steps "$TOK_STEPS" $(resume_flag "$WORK/tokenizer")
TOKENIZER=$(latest "$WORK/tokenizer")
"$BIN/eval-tokenizer" --checkpoint "$TOKENIZER" --data "$WORK/episodes" --split val --max-frames 2000

echo "== 3/5 MaskViT ($MV_STEPS steps) over $TOKENIZER"
"$BIN/train-maskvit" --config maskvit_cpu --data "$WORK/episodes" --tokenizer "$TOKENIZER" \
    --out "$WORK/maskvit" --steps "$MV_STEPS" $(resume_flag "$WORK/maskvit") --set maskvit.n_blocks=2
MASKVIT=$(latest "$WORK/maskvit")
if [ "$FT_STEPS" -gt 0 ]; then
    echo "== 3/5 fine-tune ($FT_STEPS steps) from $MASKVIT"
    if compgen -G "$WORK/maskvit_ft/step_*.pt" > /dev/null; then init=(--resume); else init=(--init-from "$MASKVIT"); fi
    "$BIN/train-maskvit" --config maskvit_cpu --data "$WORK/episodes" --tokenizer "$TOKENIZER" \
        --out "$WORK/maskvit_ft" --steps "$FT_STEPS" "${init[@]}" \
        --set maskvit.lr=0.0005 --set maskvit.warmup_steps=100 --token-cache "$WORK/maskvit/token_cache.pt" \
        --set maskvit.n_blocks=2
    MASKVIT=$(latest "$WORK/maskvit_ft")
fi
if [ "$DEEP_STEPS" -gt 0 ]; then
    echo "== 3/5 deepen to 3 blocks and fine-tune ($DEEP_STEPS steps) from $MASKVIT"
    if compgen -G "$WORK/maskvit_deep/step_*.pt" > /dev/null; then init=(--resume); else init=(--init-from "$MASKVIT"); fi
    "$BIN/train-maskvit" --config maskvit_cpu --data "$WORK/episodes" --tokenizer "$TOKENIZER" \
        --out "$WORK/maskvit_deep" --steps "$DEEP_STEPS" "${init[@]}" \
        --set maskvit.lr=0.0005 --set maskvit.warmup_steps=100 --token-cache "$WORK/maskvit/token_cache.pt"
    MASKVIT=$(latest "$WORK/maskvit_deep")
fi
if [ "$NODROP_STEPS" -gt 0 ]; then
    echo "== 3/5 fine-tune without dropout ($NODROP_STEPS steps) from $MASKVIT"
    if compgen -G "$WORK/maskvit_nodrop/step_*.pt" > /dev/null; then init=(--resume); else init=(--init-from "$MASKVIT"); fi
    "$BIN/train-maskvit" --config maskvit_cpu --data "$WORK/episodes" --tokenizer "$TOKENIZER" \
        --out "$WORK/maskvit_nodrop" --steps "$NODROP_STEPS" "${init[@]}" \
        --set maskvit.lr=0.0005 --set maskvit.warmup_steps=100 --set maskvit.dropout=0 \
        --token-cache "$WORK/maskvit/token_cache.pt"
    MASKVIT=$(latest "$WORK/maskvit_nodrop")
fi

echo "== 4/5 export"
"$BIN/export-predictor" --tokenizer "$TOKENIZER" --maskvit "$MASKVIT" --out "$WORK/predictor.ts"

echo "== 5/5 closed-loop evaluation ($EPISODES push episodes)"
"$BIN/mpc-eval" --task push --episodes "$EPISODES" --seed 1000 --predictor "$WORK/predictor.ts" \
    --workers 2 --out "$WORK/eval.json" $EVAL_ARGS
echo "done: $WORK/predictor.ts"
echo "to make it the default model: cp $WORK/predictor.ts models/weights/push_sim64.ts (package data)"
