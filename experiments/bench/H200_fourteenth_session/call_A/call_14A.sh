#!/usr/bin/env bash
# Fourteenth session, call A (nvidia-h200-x2), code at HEAD.
# GPU 0: the SSD GPU tests (the odd-size case of the one-program dB/dC, cut last time); then where llama 1B's
#        step idles (host profile, default compile and CUDA graphs).
# GPU 1: llama 1B profiled (top 40) with HF Llama compiled beside it; llama 1B with CUDA graphs; mamba 135M
#        profiled (top 30).
set -u
BUDGET_S=545; source scripts/gpu_call_lib.sh
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) SSD GPU tests"
  timeout 290 python3 -m pytest -q -rf -m gpu tests/test_triton_ssd.py -p no:cacheprovider --durations=10 > $OUT/pytest_ssd.log 2>&1
  echo "ssd tests rc $?"; tail -3 $OUT/pytest_ssd.log
  echo "$(date +%T) host profile llama 1B, $(left) s left"
  mkdir -p $OUT/host; OUT=$OUT/host timeout $(( $(left) - 10 )) python3 scripts/gpu_host_profile.py --scale 1b --steps 4 --warmup 3 \
    llama llama:reduce-overhead > $OUT/host_profile.stdout 2>&1; echo "host rc $?"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  LIMIT=200 STEPS=5 WARMUP=3 PEERS=[hf_llama_compiled] bench 1b llama "{model: llama}" "profile=true profile_steps=1 profile_top=40"
  LIMIT=130 STEPS=5 WARMUP=3 bench 1b llama_graphs "{model: llama, compile_mode: reduce-overhead}"
  LIMIT=110 bench 135m mamba "{model: mamba}" "profile=true profile_steps=1 profile_top=30"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-220; done
grep -hE "^\| (llama|hf_|mamba)" $OUT/tables.md | head; tail -15 $OUT/host_profile.stdout
