#!/usr/bin/env bash
# The wheels the lent GPU machine lacks (its image: Python 3.12, jax + CUDA, flax, optax, orbax,
# tokenizers, sentencepiece, safetensors, transformers, torch -- no package registry), into one
# ignored folder to carry there with the working tree:
#   bash benchmarks/device_wheels.sh            # -> .device-wheels/ (about 8 MB)
# then, on the machine (the device tool's `carry: [".device-wheels"]`):
#   pip install --no-index --no-deps --target .device-site .device-wheels/*.whl
#   PYTHONPATH=.device-site:. python benchmarks/device_check.py --out "$OUT/device-check"
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device-wheels
rm -rf "$out" && mkdir -p "$out"
# grain and its dependencies the image does not have; array-record (grain's ArrayRecord reader);
# tensorboardX (metrics); zstandard (.zst corpora); CPython 3.12 manylinux wheels only
python3 -m pip download --quiet --only-binary=:all: --no-deps --dest "$out" \
  --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  grain==0.2.18 array-record tensorboardX zstandard dm-tree cloudpickle more-itertools
du -sh "$out"
ls "$out"
