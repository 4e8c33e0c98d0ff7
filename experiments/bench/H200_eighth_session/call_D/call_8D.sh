#!/usr/bin/env bash
# Eighth session, call D (nvidia-h200-x2): the 135M table with the Triton fused loss as the GPU default
# (fused_loss=auto -> triton), CUDA graphs, profiled; the fused-loss GPU tests and the sync test first (GPU 1).
set -u
export PYTHONUNBUFFERED=1
B="python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=8"
T=/tmp/tables; mkdir -p $T
# Smoke: the default loss on this GPU, against full logits (stop the call if it fails: every row uses it).
python3 - <<'PY' || exit 1
import torch, torch.nn.functional as F
from flowhn.kernels.cross_entropy import linear_cross_entropy
h = torch.randn(3000, 576, device="cuda", requires_grad=True); w = torch.randn(49152, 576, device="cuda", requires_grad=True)
y = torch.randint(0, 49152, (3000,), device="cuda"); y[::7] = -100
with torch.autocast("cuda", dtype=torch.bfloat16):
    a = linear_cross_entropy(h, w, y); ga = torch.autograd.grad(a, (h, w))
    b = F.cross_entropy(F.linear(h, w).float(), y); gb = torch.autograd.grad(b, (h, w))
print("smoke", float(a), float(b), *[float((x - z).norm() / z.norm()) for x, z in zip(ga, gb)])
assert abs(float(a) - float(b)) < 1e-2 * float(b) and all(float((x - z).norm() / z.norm()) < 1e-2 for x, z in zip(ga, gb))
PY
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) start"
  timeout 330 $B peers=[hf_llama_compiled] 'entries=[{model: llama},{model: flowhn, split: fac_split},{model: flowhn, split: no_split},{model: shm}]' \
    output=$T/135m_gpu0.md hydra.run.dir=/tmp/b0; echo "$(date +%T) done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) tests"
  timeout 130 python3 -m pytest -q -rA -m gpu tests/test_fused_loss.py tests/test_cuda_graphs.py -k "triton or liger" \
    -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "tests rc $?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" $OUT/pytest.log | tail -25
  echo "$(date +%T) bench"
  timeout 300 $B peers=[] 'entries=[{model: mamba},{model: mamba2},{model: jamba},{model: hymba}]' \
    output=$T/135m_gpu1.md hydra.run.dir=/tmp/b1; echo "$(date +%T) done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|PASSED|FAILED|ERROR|passed|failed|tests rc|still allocated" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
