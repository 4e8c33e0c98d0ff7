#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what device calls carry: the shared wheels for the GPU image (hydra,
# omegaconf, wandb, datasets, ...) and install-wheels.sh, plus the wheels the image also lacks for
# the fused loss (liger-kernel, cut-cross-entropy) and for zero-shot evaluation (lm-eval and what
# its import needs: sacrebleu, portalocker, lxml, tabulate, colorama). Run here, from the repo root:
#   bash scripts/gpu_wheels.sh
# then name .whl in every device call's carry and start its command with
#   source .whl/install-wheels.sh || exit 1
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
cp ../shared/gpu/wheels/*.whl ../shared/gpu/install-wheels.sh .whl/
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
extra=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1
  lm_eval==0.4.13 sacrebleu==2.6.0 portalocker==4.4.2 lxml==6.1.3 tabulate==0.10.0 colorama==0.4.6)
for spec in "${extra[@]}"; do name=${spec%%==*}; rm -f .whl/"${name//-/_}"-*.whl; done  # one wheel each: two stop the install
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "${extra[@]}"
echo "$(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl (a call carries 64 MiB with the tree)"
