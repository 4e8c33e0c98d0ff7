#!/usr/bin/env bash
# Thirteenth session, call A (nvidia-h200-x2), code at HEAD.
# GPU 0: issue 13's library kernels against ours (scripts/gpu_library_kernels.py): the SSD (ours, mamba-ssm's
#        Triton SSD from its sdist, fla's chunk_simple_gla), then fla's conv with its Gluon kernels.
# GPU 1: mamba2 350M with the states recomputed (its default) and kept; ae_split and fa_split 135M (the memory
#        table); then the conv and the gated norm against fla.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 540 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
python3 -m pip install -q --no-index --no-deps --target /tmp/libs logs/libs/*.whl || exit 1
LIBS=/tmp/libs; SDIST=$(ls logs/libs/mamba_ssm-*.tar.gz)
bench() {  # $1 scale, $2 tag, $3 entry, $4 extra args
  local limit=${LIMIT:-90}
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=${PEERS:-[]} "entries=[$3]" ${4:-} output=$T/$1_$2.md hydra.run.dir=/tmp/r_$RANDOM
}
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) ssd against the libraries"
  PYTHONPATH=$PYTHONPATH:$LIBS timeout 360 python3 scripts/gpu_library_kernels.py --parts ssd --mamba-ssm $SDIST \
    > $OUT/ssd.stdout 2>&1; echo "ssd rc $?"
  echo "$(date +%T) conv, fla gluon"
  PYTHONPATH=$PYTHONPATH:$LIBS timeout $(( $(left) - 10 )) python3 scripts/gpu_library_kernels.py --parts conv --fla-gluon \
    > $OUT/conv_gluon.stdout 2>&1; echo "conv gluon rc $?"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  STEPS=10 WARMUP=4 LIMIT=110 bench 350m mamba2_recompute "{model: mamba2}"
  STEPS=10 WARMUP=4 LIMIT=110 bench 350m mamba2_kept "{model: mamba2, model.ssd_recompute: false}"
  bench 135m ae_split "{model: flowhn, split: ae_split}"
  bench 135m fa_split "{model: flowhn, split: fa_split}"
  echo "$(date +%T) conv and norm against fla, $(left) s left"
  PYTHONPATH=$PYTHONPATH:$LIBS timeout $(( $(left) - 5 )) python3 scripts/gpu_library_kernels.py --parts conv,norm \
    > $OUT/conv_norm.stdout 2>&1; echo "conv/norm rc $?"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
for f in $OUT/library_*.log; do echo "== $f"; grep -E "FAIL|ERROR|^\|" $f | cut -c1-200; done
