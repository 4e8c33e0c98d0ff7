#!/usr/bin/env bash
# Eighth session, call F (nvidia-h200-x2, the last minutes): train.py at 135M with the Triton loss (the default
# since 89fed75) for fac_split (GPU 0) and llama (GPU 1), issue 14's ThroughputMonitor over 120 steps, to set
# against call D's bench rows; then the 135M bench rows of ae_split (GPU 0) and fa_split (GPU 1), profiled.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 235 - ($(date +%s) - started) )); }
for g in 0 1; do
  (
    export CUDA_VISIBLE_DEVICES=$g; m=$([[ $g == 0 ]] && echo fac_split || echo llama)
    s=$([[ $g == 0 ]] && echo ae_split || echo fa_split)
    echo "$(date +%T) train $m"
    OUT=/tmp/t$g SCALE=135m MODELS="$m" FUSED=default CODES=after BENCH=0 TESTS=0 STEPS=120 DEADLINE_S=170 \
      RUN_TIMEOUT_S=150 bash scripts/gpu_train_speed.sh > /tmp/t$g.log 2>&1
    cp /tmp/t$g/train_speed.csv $OUT/train_speed_$m.csv; tail -3 /tmp/t$g.log
    echo "$(date +%T) bench $s, $(left) s left"
    (( $(left) > 45 )) && timeout $(( $(left) - 3 )) python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true \
      profile_steps=1 profile_top=4 peers=[] "entries=[{model: flowhn, split: $s}]" output=$OUT/135m_$s.md hydra.run.dir=/tmp/a$g
    echo "$(date +%T) gpu$g done"
  ) > $OUT/gpu$g.log 2>&1 &
done
wait
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
cat $OUT/train_speed_*.csv 2>/dev/null
