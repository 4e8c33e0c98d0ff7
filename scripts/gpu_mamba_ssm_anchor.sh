#!/usr/bin/env bash
# Issue 13's reference anchor: causal-conv1d and mamba-ssm built from source for sm_90 inside one device call,
# then the mamba_ssm backend tests that skip elsewhere, its kernels against ours, and its Mamba LM in the bench.
#
#   bash scripts/gpu_mamba_ssm_anchor.sh fetch    # here (needs PyPI): the two sdists, ninja's and einops' wheels into logs/mamba_src
#   # device call (the one-GPU kind is enough), carry [".whl", "logs/mamba_src"]:
#   source .whl/install-wheels.sh >/dev/null || exit 1; export PYTHONPATH=$PYTHONPATH:src; bash scripts/gpu_mamba_ssm_anchor.sh
#
# The build: scripts/trim_mamba_ssm_build.py leaves only sm_90, mamba-ssm's fp32/bf16 real-weight scan (4 CUDA
# files of 10) and causal-conv1d's fp32/bf16 width-4 kernels; both packages build at once with MAX_JOBS
# (default: the cores), each under BUILD_S seconds (default 330), logs in $OUT, wheels in /tmp/anchor_wheels.
# ANCHOR_STAGES picks which of tests, kernels and bench run after the install; ANCHOR_S bounds the whole
# script. Whatever stage it reaches is printed last. On an H200's 16 cores (twenty-first session, calls B-E)
# the trimmed build takes 85-115 s; experiments/bench/H200.md has what it measured.
set -u
SRC=logs/mamba_src
MAMBA_SSM=2.3.2.post1
CAUSAL_CONV1D=1.7.0

if [ "${1:-}" = fetch ]; then
  set -e
  mkdir -p $SRC
  for spec in mamba-ssm:$MAMBA_SSM causal-conv1d:$CAUSAL_CONV1D; do
    name=${spec%%:*}; version=${spec##*:}
    url=$(curl -s "https://pypi.org/pypi/$name/json" | python3 -c "import json, sys
print(next(u['url'] for u in json.load(sys.stdin)['releases']['$version'] if u['packagetype'] == 'sdist'))")
    curl -s -o "$SRC/$(basename "$url")" "$url"
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $SRC ninja
  python3 -m pip download -q --no-deps -d $SRC einops  # mamba_ssm imports it; the image may lack it
  ls -la $SRC
  exit 0
fi

export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/anchor}; WHEELS=/tmp/anchor_wheels; rm -rf $WHEELS; mkdir -p $OUT $WHEELS  # the wheels stay off $OUT (tens of MB)
BUILD=/tmp/mamba_build; SITE=/tmp/mamba_site; rm -rf $BUILD; mkdir -p $BUILD $SITE
stage="sources"
report() { echo "anchor: reached '$stage' after $(( $(date +%s) - started )) s"; }
started=$(date +%s); trap report EXIT
ls $SRC/mamba_ssm-*.tar.gz $SRC/causal_conv1d-*.tar.gz $SRC/ninja-*.whl >/dev/null || { echo "run '$0 fetch' here first"; exit 1; }
python3 -m pip install -q --no-index --no-deps --target $SITE $SRC/*.whl || exit 1  # ninja, and einops if fetched
export PATH=$SITE/bin:$PATH PYTHONPATH=$SITE:$PYTHONPATH
for f in $SRC/*.tar.gz; do tar xzf "$f" -C $BUILD; done
python3 scripts/trim_mamba_ssm_build.py $BUILD | tee $OUT/trim.log || exit 1

stage="build"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-$(nproc)} MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
echo "$(date +%T) building with MAX_JOBS=$MAX_JOBS on $(nproc) cores, nvcc: $(nvcc --version | tail -1)"
for pkg in causal_conv1d mamba_ssm; do
  ( t0=$(date +%s); cd $BUILD/$pkg-*/ && timeout ${BUILD_S:-330} python3 -m pip wheel -v --no-deps \
      --no-build-isolation -w $WHEELS . > $OUT/build_$pkg.log 2>&1
    echo "$pkg build rc $? after $(( $(date +%s) - t0 )) s"; tail -3 $OUT/build_$pkg.log ) &
done
wait
ls $WHEELS/mamba_ssm-*.whl 2>/dev/null || exit 1
ls $WHEELS/causal_conv1d-*.whl 2>/dev/null || echo "causal_conv1d did not build: the scan is compared alone, mamba-ssm's LM takes its path without it"

stage="install"
python3 -m pip install -q --no-index --no-deps --target $SITE $WHEELS/*.whl || exit 1
# torch first: the extensions link against its libc10.so (call C of the twenty-first session failed there)
python3 -c "import torch, selective_scan_cuda, mamba_ssm; print('mamba_ssm', mamba_ssm.__version__, 'imports')" || exit 1
python3 -c "import torch, causal_conv1d_cuda; print('causal_conv1d imports')"

wanted() { [[ " ${ANCHOR_STAGES:-tests kernels bench} " == *" $1 "* ]]; }  # which of the three after the install run (in this order)
stage="tests"
wanted tests && { timeout 120 python3 -m pytest -q -rs -m gpu tests/test_kernels.py -k mamba_ssm \
  -p no:cacheprovider > $OUT/pytest_mamba_ssm.log 2>&1; echo "mamba_ssm tests rc $?"; tail -3 $OUT/pytest_mamba_ssm.log; }

stage="kernels"
wanted kernels && { timeout 150 python3 scripts/gpu_mamba_ssm_compare.py > $OUT/compare.log 2>&1
  echo "compare rc $?"; grep "^|" $OUT/compare.log; }

stage="bench"
left=$(( ${ANCHOR_S:-560} - ($(date +%s) - started) ))  # ANCHOR_S: the seconds the whole script may take
wanted bench && (( left > 80 )) && timeout $(( left - 10 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 peers=[mamba_ssm] \
  'entries=[{model: mamba}]' output=$OUT/bench_1b.md hydra.run.dir=/tmp/anchor_bench
grep "^|" $OUT/bench_1b.md 2>/dev/null
stage="done"
