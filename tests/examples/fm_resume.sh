#!/bin/sh
# SPDX-License-Identifier: MIT
# A run stopped after an epoch and resumed ends bit for bit where the
# whole run ends: model, optimiser, lr schedule, data order and dropout.
# usage: fm_resume.sh FASHION_MNIST_BINARY WORKDIR MODEL
set -eu
bin=$1
dir=$2/fm-resume-$3
rm -rf "$dir"
mkdir -p "$dir"
run() {
	"$bin" --model "$model" --limit 384 --batch 64 --epochs 3 "$@"
}
model=$3
run --threads 2 --checkpoint "$dir/whole.safetensors" > "$dir/whole.log"
# the same run stopped after epochs 1 and 2 and resumed each time; on the
# same thread count, as GEMMs split over the pool round differently on
# another (include/ag/autograd.h)
run --threads 2 --stop-after 1 --checkpoint "$dir/cut.safetensors" \
	> "$dir/cut1.log"
run --threads 2 --stop-after 2 --checkpoint "$dir/cut.safetensors" \
	--resume > "$dir/cut2.log"
run --threads 2 --checkpoint "$dir/cut.safetensors" --resume \
	> "$dir/cut3.log"
cmp "$dir/whole.safetensors" "$dir/cut.safetensors"
cmp "$dir/whole.safetensors.optim" "$dir/cut.safetensors.optim"
echo "ok: $model stopped and resumed twice, bitwise the same"
rm -rf "$dir"
