#!/usr/bin/env bash
# Fashion-MNIST, IPC 10: random subset, oracle window, SelMatch, MTT and SeqMatch from the CLI,
# all evaluated the same way. CPU-sized (ConvNet width 32, 5-epoch experts, 300 iterations):
# a reduced budget, not the paper's. Resumable: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/selmatch
OUT=runs/study
EXPERTS=$OUT/experts-w32
IPC=10
BETA=0.8          # best window of the IPC-10 sweep (data-fraction convention)
CONV=data-fraction
ITERATIONS=300    # SeqMatch: split over its K=2 stages, so every method gets 300 matching steps
DISTILL="--student-steps 20 --expert-epochs 2 --max-start-epoch 3 --syn-batch 100 --checkpoint-every 50 --no-progress"
EVAL="--width 32 --epochs 300 --seeds 3 --no-progress"

[ -f $EXPERTS/scores.safetensors ] || \
  $S experts --width 32 --num-experts 2 --epochs 5 --el2n-epoch 2 --out $EXPERTS --no-progress

[ -f $OUT/window-ipc$IPC/set.safetensors ] || \
  $S window --scores $EXPERTS --ipc $IPC --beta $BETA --beta-convention $CONV --out $OUT/window-ipc$IPC
for method in selmatch mtt seqmatch; do
  dir=$OUT/distill-$method-ipc$IPC
  [ -f $dir/set.safetensors ] && continue
  resume=""; [ -f $dir/checkpoint/state.json ] && resume="--resume"
  iterations=$ITERATIONS; [ $method = seqmatch ] && iterations=$((ITERATIONS / 2))
  $S distill --method $method --ipc $IPC --experts $EXPERTS --scores $EXPERTS \
    --beta $BETA --beta-convention $CONV --alpha 0.5 --subsets 2 $DISTILL \
    --iterations $iterations --out $dir $resume
done

[ -f $OUT/eval-random-ipc$IPC.json ] || $S evaluate --ipc $IPC $EVAL --out $OUT/eval-random-ipc$IPC.json
for name in window distill-selmatch distill-mtt distill-seqmatch; do
  [ -f $OUT/eval-$name-ipc$IPC.json ] || \
    $S evaluate --set $OUT/$name-ipc$IPC $EVAL --out $OUT/eval-$name-ipc$IPC.json
done
