#!/usr/bin/env bash
# Ninth session, call B (nvidia-h200-x2): the Gluon backward's staged atomics (fb1dd26) and conflict-free
# sum reads (5230175) against call A's kernel (709b960).
# GPU 0: the scan's GPU tests (float64), gpu_scan_tiles.py with 709b960's and fb1dd26's kernels and this one,
#        ncu counters of this backward, mamba 1B with 709b960's src and with this one (separate processes),
#        then 1B fac_split.
# GPU 1: train.py jamba at 135M (120 steps, ThroughputMonitor), then the 135M bench rows of every
#        architecture with a Mamba-1 scan, then 1B ae_split and fa_split.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 530 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
BEFORE=logs/calls/before_A/src
P="scripts/gpu_scan_profile.py gluon,4,2,8,sequence,2 --no-profiler"
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 200 python3 -m pytest -q -rf -m gpu tests/test_kernels.py -k "gluon or selective_scan_gpu" -p no:cacheprovider \
    > $OUT/pytest.log 2>&1; echo "tests rc $?"; tail -2 $OUT/pytest.log
  echo "$(date +%T) tiles"
  OUT=/tmp timeout 130 python3 scripts/gpu_scan_tiles.py --budget-s 75 --before-gluon logs/calls/gluon_A.py logs/calls/gluon_S.py \
    > /dev/null 2>&1; cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  echo "$(date +%T) ncu"
  M=gpu__time_duration.sum,smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,lts__t_requests_srcunit_l1_op_red.sum,lts__t_sectors_srcunit_l1_op_red.sum
  timeout 60 ncu --clock-control none -k regex:_scan_bwd_seq_kernel -c 1 --metrics $M python3 $P > $OUT/ncu_after.log 2>&1
  for side in A after; do echo "$(date +%T) mamba 1B $side, $(left) s left"
    [ $side = A ] && pp=$BEFORE:$PYTHONPATH || pp=$PYTHONPATH
    (( $(left) > 70 )) && PYTHONPATH=$pp timeout $(( $(left) - 5 > 100 ? 100 : $(left) - 5 )) python3 -m flowhn.bench \
      scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=4 peers=[] 'entries=[{model: mamba}]' \
      output=$T/1b_mamba_$side.md hydra.run.dir=/tmp/m_$side; done
  echo "$(date +%T) 1b fac_split, $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true \
    profile_steps=1 profile_top=4 peers=[] 'entries=[{model: flowhn, split: fac_split}]' output=$T/1b_fac.md hydra.run.dir=/tmp/f
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) train jamba 135m"
  OUT=/tmp/t1 SCALE=135m MODELS=jamba FUSED=default CODES=after BENCH=0 TESTS=0 STEPS=120 DEADLINE_S=150 \
    RUN_TIMEOUT_S=140 bash scripts/gpu_train_speed.sh > /tmp/t1.log 2>&1
  cp /tmp/t1/train_speed.csv $OUT/train_speed_jamba.csv; tail -3 /tmp/t1.log
  echo "$(date +%T) 135m rows, $(left) s left"
  timeout $(( $(left) - 100 )) python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=4 \
    peers=[] 'entries=[{model: jamba},{model: mamba},{model: hymba},{model: flowhn, split: no_split},{model: shm},{model: flowhn, split: fac_split}]' \
    output=$T/135m.md hydra.run.dir=/tmp/s
  echo "$(date +%T) 1b ae, fa; $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 3 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true \
    profile_steps=1 profile_top=4 peers=[] 'entries=[{model: flowhn, split: ae_split},{model: flowhn, split: fa_split}]' \
    output=$T/1b_aefa.md hydra.run.dir=/tmp/b
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|passed|failed|tests rc|Error|still allocated" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "^FAILED" $OUT/pytest.log | head -10
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -6
echo "== ncu"; grep -E "duration|inst_executed|issue_active|wavefronts|conflicts|lts__" $OUT/ncu_after.log
cat $OUT/train_speed_jamba.csv 2>/dev/null
