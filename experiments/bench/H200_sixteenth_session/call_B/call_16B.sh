#!/usr/bin/env bash
# Sixteenth session, call B (nvidia-h200): GPU tests (keep_states fixed test; the conv + x_proj op with the
# conv backward reading both gradients; the walk conv; the mixer); mamba 135M with keep on (profiled);
# mamba 1B keep on / off; no_split 135M keep on / off; one after the other on this GPU.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
echo "$(date +%T) gpu tests"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py tests/test_triton_conv.py \
  -k "keeps_states or mamba1_mixer or conv_proj_gpu or (triton_conv_gpu and walk)" > $OUT/pytest.log 2>&1
echo "pytest rc $?"; tail -3 $OUT/pytest.log
LIMIT=75 bench 135m mamba_keep "{model: mamba, model.ssm_keep_scan_states: true}" "profile=true profile_steps=1 profile_top=30"
STEPS=5 WARMUP=3 LIMIT=85 bench 1b mamba_keep "{model: mamba, model.ssm_keep_scan_states: true}"
STEPS=5 WARMUP=3 LIMIT=85 bench 1b mamba_nokeep "{model: mamba, model.ssm_keep_scan_states: false}"
LIMIT=65 bench 135m nosplit_keep "{model: flowhn, split: no_split, model.ssm_keep_scan_states: true}"
LIMIT=65 bench 135m nosplit_nokeep "{model: flowhn, split: no_split, model.ssm_keep_scan_states: false}"
tables
echo "== rows"; grep -hE "^\| (mamba|flowhn)" $OUT/tables.md
