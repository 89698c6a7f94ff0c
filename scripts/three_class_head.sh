#!/usr/bin/env bash
# The three-class (normal / bacterial / viral pneumonia) two-stage result: a backbone trained from scratch on a
# patient-grouped train/val/test split of the shared training set, its penultimate features of every image of its
# split, the dense head and the logistic-regression baseline trained on its train rows, chosen on its val rows and
# measured on its test rows (patients the backbone never saw), then `evaluate` and `explain` on the two-stage model.
#
#   scripts/three_class_head.sh [DATA] [OUT]     # defaults: ../shared/data/chest_xray/train, runs/three-class
set -euo pipefail

DATA=${1:-../shared/data/chest_xray/train}
OUT=${2:-runs/three-class}
mkdir -p "$OUT"

# 1. Backbone: three-block-cnn at 64x64 from scratch (no ImageNet weights offline), three-class labels, 3 epochs:
#    what a 2-core CPU shared with other jobs trained in time (resnet18 at 64-128 did not finish).
nice lungscope train --model three-block-cnn --image-size 64 --labels three-class --data "$DATA" \
    --out "$OUT/backbone" --epochs 3 --early-stopping 2 --batch-size 32 --lr 0.001 --weight-decay 0.0001 \
    --scheduler cosine --seed 0

# 2. Features of every row of its split (the input of its final Linear: 128 values per image).
nice lungscope features "$OUT/backbone" "$OUT/backbone/split.csv" --out "$OUT/features.parquet"

# 3. Heads: rows keep the backbone's train/val/test side (one thread: a small dense layer gains nothing from more, and
#    on a loaded CPU two spinning threads made each epoch 20x slower).
OMP_NUM_THREADS=1 nice lungscope train-head "$OUT/features.parquet" --labels three-class --out "$OUT/head"

# 4. The two-stage model evaluated from the images (reproduces the head's test metrics) and explained.
nice lungscope evaluate "$OUT/head" --data "$OUT/head/split.csv" --split test --json "$OUT/head/test.json"
lungscope explain "$OUT/head" "$(awk -F, '$4 == "test" {print $1; exit}' "$OUT/head/split.csv")" --out "$OUT/maps"
