#!/usr/bin/env bash
# Ninth session, call A (nvidia-h200-x2): the Gluon backward's dB/dC product tile lane-major and swizzled
# (no shared-memory bank conflicts on its stores) against faeb6eb's kernel; the 1B table with our loss.
# GPU 0: the scan's GPU tests (float64), gpu_scan_tiles.py faeb6eb's kernel vs the new one, ncu counters of
#        the new backward, then mamba 1B before (faeb6eb's src) / after, separate processes.
# GPU 1: 1B llama, HF Llama, mamba2 (no Mamba-1 scan); then, once GPU 0's tests pass, 1B no_split, shm,
#        jamba, hymba with the new kernel (with faeb6eb's if the tests failed).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 540 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T; rm -f /tmp/tests_rc
BEFORE=logs/calls/before/src
P="scripts/gpu_scan_profile.py gluon,4,2,8,sequence,2 --no-profiler"
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 240 python3 -m pytest -q -rf -m gpu tests/test_kernels.py -k "gluon or selective_scan_gpu" -p no:cacheprovider \
    > $OUT/pytest.log 2>&1; rc=$?; echo $rc > /tmp/tests_rc; echo "tests rc $rc"; tail -3 $OUT/pytest.log
  echo "$(date +%T) tiles"
  OUT=/tmp timeout 120 python3 scripts/gpu_scan_tiles.py --budget-s 90 --before-gluon logs/calls/gluon_scan_before.py \
    > /dev/null 2>&1; cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  echo "$(date +%T) ncu"
  M=gpu__time_duration.sum,smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum
  timeout 60 ncu --clock-control none -k regex:_scan_bwd_seq_kernel -c 1 --metrics $M python3 $P > $OUT/ncu_after.log 2>&1
  PYTHONPATH=$BEFORE:$PYTHONPATH timeout 60 ncu --clock-control none -k regex:_scan_bwd_seq_kernel -c 1 --metrics $M python3 $P \
    > $OUT/ncu_before.log 2>&1
  for side in before after; do echo "$(date +%T) mamba 1B $side, $(left) s left"
    [ $side = before ] && pp=$BEFORE:$PYTHONPATH || pp=$PYTHONPATH
    (( $(left) > 70 )) && PYTHONPATH=$pp timeout $(( $(left) - 5 > 120 ? 120 : $(left) - 5 )) python3 -m flowhn.bench \
      scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=4 peers=[] 'entries=[{model: mamba}]' \
      output=$T/1b_mamba_$side.md hydra.run.dir=/tmp/m_$side; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) 1b llama, HF, mamba2"
  timeout 200 python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=4 \
    peers=[hf_llama_compiled] 'entries=[{model: llama},{model: mamba2}]' output=$T/1b_a.md hydra.run.dir=/tmp/a
  while [ ! -f /tmp/tests_rc ] && (( $(left) > 60 )); do sleep 2; done
  pp=$PYTHONPATH; [ "$(cat /tmp/tests_rc 2>/dev/null)" = 0 ] || { pp=$BEFORE:$PYTHONPATH; echo "tests failed: faeb6eb's kernel"; }
  echo "$(date +%T) 1b no_split, shm, jamba, hymba; $(left) s left"
  (( $(left) > 60 )) && PYTHONPATH=$pp timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 \
    profile=true profile_steps=1 profile_top=4 peers=[] \
    'entries=[{model: flowhn, split: no_split},{model: shm},{model: jamba},{model: hymba}]' output=$T/1b_b.md hydra.run.dir=/tmp/b
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|passed|failed|tests rc|Error|still allocated" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "^FAILED" $OUT/pytest.log | head -10
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -6
for s in before after; do echo "== ncu $s"; grep -E "duration|inst_executed|issue_active|wavefronts|conflicts" $OUT/ncu_$s.log; done
