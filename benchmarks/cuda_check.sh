#!/usr/bin/env bash
# The CUDA paths on one GPU, end to end: the demo (train with bf16 autocast and channels-last,
# predict, evaluate, pictures), a batch-norm training run, 5-fold cross-validation with
# ensemble prediction from the run folder, then speed.py on the GPU.
#
#   bash benchmarks/cuda_check.sh [OUT]     # needs torch with CUDA; peers from the bench extra
#
# With no unetseg installed, it runs from src/ (PYTHONPATH); the speed table goes to OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-cuda-check}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
began=$SECONDS
python3 -m unetseg.cli demo --out /tmp/cuda-check/demo --time-budget 60 --device cuda
cp /tmp/cuda-check/demo/evaluation/metrics.json /tmp/cuda-check/demo/run/curves.png "$OUT/"
echo "demo: $((SECONDS - began)) s"
began=$SECONDS
python3 -m unetseg.cli -q train src/unetseg/demo_data/isbi2012 --out /tmp/cuda-check/bn \
    --norm batch --time-limit 30 --device cuda --classes 0,255
python3 -m unetseg.cli -q predict /tmp/cuda-check/bn/best.safetensors \
    src/unetseg/demo_data/isbi2012/images --out /tmp/cuda-check/bn-pred --device cuda --tta d4
echo "batch norm train + d4 predict: $((SECONDS - began)) s"
began=$SECONDS
python3 -m unetseg.cli -q train src/unetseg/demo_data/isbi2012 --out /tmp/cuda-check/cv \
    --folds 5 --time-limit 150 --device cuda --classes 0,255
python3 -m unetseg.cli -q predict /tmp/cuda-check/cv src/unetseg/demo_data/isbi2012/images \
    --out /tmp/cuda-check/cv-pred --device cuda
cp /tmp/cuda-check/cv/folds.json /tmp/cuda-check/cv/modelset.json "$OUT/"
echo "5 folds + ensemble predict: $((SECONDS - began)) s"
python3 benchmarks/speed.py --device cuda --reps 3 \
    --networks unetseg,unetseg-w16,monai-basicunet --out "$OUT/speed-cuda.md"
