#!/usr/bin/env bash
# Rebuild the bundled models in segflow/bundled/ with `segflow train` on the built-in
# sample generators (seeds other than the demo's seed 0, so the demo scores held-out data).
#
#   scripts/train_bundled.sh [landcover|phantom|all]
#
# One torch thread: on a shared 2-core machine it trains faster than two (no spin-waiting
# between oversubscribed threads). Each model takes about 5-10 CPU minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
data="${SEGFLOW_TRAIN_DATA:-build/bundled-data}"
mkdir -p "$data"

if [[ "$which" == "all" || "$which" == "landcover" ]]; then
  uv run python -c "
from segflow.samples import make_landcover_scene
make_landcover_scene('$data/lc_train.tif', '$data/lc_train_mask.tif', size=(2048, 2048), seed=101)
make_landcover_scene('$data/lc_val.tif', '$data/lc_val_mask.tif', size=(1024, 1024), seed=102)
"
  uv run segflow train \
    --images "$data/lc_train.tif" --masks "$data/lc_train_mask.tif" \
    --val-images "$data/lc_val.tif" --val-masks "$data/lc_val_mask.tif" \
    --classes landcover --arch unet2d --arch-arg depth=4 --arch-arg base_channels=12 \
    --patch-size 256 --batch-size 8 --epochs 8 --steps-per-epoch 60 --lr 0.002 \
    --val-patches 32 --infer-patch 512 --seed 0 --threads 1 \
    --checkpoint-dir "$data/landcover.ckpt" \
    --output segflow/bundled/landcover-unet.safetensors
fi

if [[ "$which" == "all" || "$which" == "phantom" ]]; then
  # volumes of several sizes (the anatomy scales with the volume; voxels stay 1.5 mm)
  uv run python -c "
from segflow.samples import make_phantom_volume
shapes = [(160, 160, 96), (128, 128, 96), (96, 96, 64), (144, 128, 80),
          (176, 160, 96), (112, 112, 72), (160, 144, 88), (128, 112, 64),
          (160, 160, 96), (144, 144, 96), (192, 176, 96), (120, 120, 80)]
for seed, shape in enumerate(shapes, start=101):
    make_phantom_volume(f'$data/ph_train{seed}.nii.gz', f'$data/ph_train{seed}_label.nii.gz', shape=shape, seed=seed)
make_phantom_volume('$data/ph_val.nii.gz', '$data/ph_val_label.nii.gz', shape=(160, 160, 96), seed=150)
"
  images=() masks=()
  for seed in $(seq 101 112); do
    images+=(--images "$data/ph_train$seed.nii.gz")
    masks+=(--masks "$data/ph_train${seed}_label.nii.gz")
  done
  # no flips or quarter turns (the liver is on the right), and no intensity jitter
  # (CT numbers are absolute: liver, spleen and soft tissue differ by 10-30 HU)
  uv run segflow train "${images[@]}" "${masks[@]}" \
    --val-images "$data/ph_val.nii.gz" --val-masks "$data/ph_val_label.nii.gz" \
    --classes phantom --arch unet2d --arch-arg depth=4 --arch-arg base_channels=12 \
    --slice-axis 2 --patch-size 160 --batch-size 8 --epochs 15 --steps-per-epoch 100 \
    --lr 0.002 --dice-weight 0.5 --balance --class-weights auto --no-flip --no-rotate \
    --gain 0 --bias 0 --clip-percentiles 0.5,99.5 --val-patches 48 --seed 0 \
    --threads 1 --checkpoint-dir "$data/phantom.ckpt" \
    --output segflow/bundled/phantom-unet.safetensors
fi
