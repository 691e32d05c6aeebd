#!/usr/bin/env bash
# The ZO-AE-DS tables of the README (MNIST-5k and Fashion-MNIST at sigma = 0.25): a plain CNN
# as the black box, every training variant, each certified with Cohen's CERTIFY (n0 = 100,
# n = 10,000, alpha = 0.001) on the first LIMIT test images, then one table and one plot.
#
#   bash bench/defend_mnist.sh [OUT]          # default OUT: runs/defend-DATA
#   EPOCHS=10 LIMIT=200 N=10000 SEED=0 bash bench/defend_mnist.sh OUT
#   DATA=fashion-mnist TRAIN_LIMIT=3500 SIGMA=0.25 bash bench/defend_mnist.sh OUT
#
# DATA: a data set name of bbzo defend (28x28 images); TRAIN_LIMIT: the defenses train on the
# first N training images (the black box on all of them); SIGMA: the noise level.
#
# Restartable: a step whose summary.json exists is skipped, an interrupted one resumes
# (--resume), so a killed run repeats no finished training epoch and no answered query.
# The autoencoder is pre-trained once (by the FO-AE-DS run) and shared by the ZO-AE-DS runs.
set -euo pipefail
DATA=${DATA:-mnist5k}
SIGMA=${SIGMA:-0.25}
OUT=${1:-runs/defend-$DATA}
EPOCHS=${EPOCHS:-10}
AE_EPOCHS=${AE_EPOCHS:-30}
LIMIT=${LIMIT:-200}
N=${N:-10000}
SEED=${SEED:-0}
BBZO=${BBZO:-bbzo}
mkdir -p "$OUT"

step() {  # step DIR COMMAND...: run COMMAND --out DIR, resuming a started DIR
    local dir=$1; shift
    if [ -f "$dir/summary.json" ]; then echo "done: $dir"; return; fi
    if [ -d "$dir" ]; then "$@" --out "$dir" --seed "$SEED" --resume
    else "$@" --out "$dir" --seed "$SEED"; fi
}

if [ ! -f "$OUT/classifier/training.json" ]; then
    $BBZO defend train-classifier --data "$DATA" --epochs 10 --out "$OUT/classifier" --seed "$SEED"
fi
CLF=$OUT/classifier
TRAIN=($BBZO defend train --blackbox "$CLF" --data "$DATA" --sigma "$SIGMA" --epochs "$EPOCHS"
       ${TRAIN_LIMIT:+--train-limit "$TRAIN_LIMIT"})
step "$OUT/fo-ds" "${TRAIN[@]}" --method fo-ds
step "$OUT/fo-ae-ds" "${TRAIN[@]}" --method fo-ae-ds --ae-epochs "$AE_EPOCHS"
AE=(--autoencoder "$OUT/fo-ae-ds")
step "$OUT/zo-ae-ds-cge" "${TRAIN[@]}" --method zo-ae-ds --estimator cge "${AE[@]}"
step "$OUT/zo-ae-ds-rge-q20" "${TRAIN[@]}" --method zo-ae-ds --estimator rge --q 20 "${AE[@]}"
step "$OUT/zo-ds-rge-q20" "${TRAIN[@]}" --method zo-ds --estimator rge --q 20
step "$OUT/zo-ae-ds-rge-q48" "${TRAIN[@]}" --method zo-ae-ds --estimator rge --q 48 "${AE[@]}"

CERTIFY=($BBZO defend certify --data "$DATA" --sigma "$SIGMA" --n0 100 --n "$N" --alpha 0.001
         --limit "$LIMIT")
RUNS=()
ALL="classifier fo-ds fo-ae-ds zo-ae-ds-cge zo-ae-ds-rge-q20 zo-ae-ds-rge-q48 zo-ds-rge-q20"
for run in ${CERTIFY_ONLY:-$ALL}; do  # CERTIFY_ONLY="a b": certify these only (split the work)
    step "$OUT/certify-$run" "${CERTIFY[@]}" --model "$OUT/$run"
done
for run in $ALL; do
    [ -f "$OUT/certify-$run/summary.json" ] && RUNS+=("$OUT/certify-$run")
done
$BBZO defend compare "${RUNS[@]}" --plot "$OUT/certified.png" | tee "$OUT/compare.txt"
