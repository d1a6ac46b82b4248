#!/usr/bin/env bash
# One lent GPU machine's work (docs/training.md, "On a lent GPU"): train recipes' -gpu
# variants on all of CIFAR-10 and bring back their curves, logs and deployed models
# (3 files per recipe and device.txt: at most 8 files come back, so two recipes a call).
# Run from the repository root on the device with `.whl` and `.devdata` carried:
#
#   bash benchmarks/device_gpu.sh                          # RECIPES: cifar10-cnv-30min-gpu
#   RECIPES="cifar10-cnv-gpu cifar10-vgg-small-gpu" bash benchmarks/device_gpu.sh
#
# PY (default python3) and TRAIN_ARGS (extra `binsense train` flags) make it testable on a
# CPU: PY=.venv/bin/python SKIP_INSTALL=1 RECIPES=cifar10-cnv-30min
#   TRAIN_ARGS="--epochs 1 --train-subset 10 --test-subset 10" OUT=/tmp/o bash ...
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder results go to}
if [ -z "${SKIP_INSTALL:-}" ]; then  # binsense's one dependency the device image lacks
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 BINSENSE_DATA=/tmp/bsdata
$PY benchmarks/device_data.py unpack .devdata/cifar10.pack /tmp/bsdata/cifar10-jpeg || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU";
  $PY -c "import torch; print('torch', torch.__version__)"; date -u; } | tee "$OUT/device.txt"
for r in ${RECIPES:-cifar10-cnv-30min-gpu}; do
    run=/tmp/bsruns/$r
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
    $PY -m binsense train --recipe "$r" --seed 0 --out "$run" ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/$r.log"
    cp "$run/metrics.jsonl" "$OUT/$r.metrics.jsonl"
    $PY -m binsense deploy --checkpoint "$run/checkpoint.pt" --out "$OUT/$r.bsd" --check \
        2>&1 | tee -a "$OUT/$r.log"
done
