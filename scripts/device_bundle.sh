#!/usr/bin/env bash
# Build .device/ (git-ignored) for scripts/gpu_proof.py on an offline GPU machine that receives the checkout and
# .device/ (64 MiB in all), and print the run command. The GPU machine's image has torch, opencv, numpy,
# scikit-image, yaml, tqdm, tensorboard and safetensors but no basicsr and no lmdb, and no network: basicsr 1.4.2 (an
# sdist whose build needs torch) is built into a wheel here, lmdb's wheel is fetched for the GPU machine's Python
# (3.12). The data are copies of ../shared/datasets' T91, BSD200 and Set5 (~58 MiB: 64 MiB go across in all, so
# nothing else goes).
#   bash scripts/device_bundle.sh [SHARED_DATASETS] [DEVICE_PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/datasets}
pyver=${2:-3.12}
py=${PYTHON:-python}
for d in T91 BSD200 Set5; do
  [ -d "$src/$d" ] || { echo "device_bundle: $src/$d does not exist; pass the folder that holds T91, BSD200 and Set5" >&2; exit 2; }
done
tmp=.device.tmp-$$
rm -rf "$tmp"
mkdir -p "$tmp/whl" "$tmp/data"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/whl" basicsr==1.4.2
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp/whl" lmdb
cp -rL "$src/T91" "$src/BSD200" "$tmp/data/"
mkdir -p "$tmp/data/Set5/LR_bicubic"
cp -rL "$src/Set5/HR" "$tmp/data/Set5/"
cp -rL "$src/Set5/LR_bicubic/X3" "$src/Set5/LR_bicubic/X4" "$tmp/data/Set5/LR_bicubic/"
rm -rf .device
mv "$tmp" .device
bundle=$(du -sb .device | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "device_bundle: .device $((bundle / 1048576)) MiB + checkout $((tree / 1048576)) MiB of the 64 MiB that go across"
if [ $((bundle + tree)) -gt $((64 * 1048576)) ]; then
  echo "device_bundle: over 64 MiB; too large to send (leave BSD200 out and train on T91 alone)" >&2
  exit 1
fi
cat <<'CMD'
on the GPU machine, from the checkout with .device/ beside it (about 10 minutes):
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 scripts/gpu_proof.py --data .device/data --out $OUT --budget-s 570 --stages idn
CMD
