#!/usr/bin/env bash
# The scan's relaxed dB/dC atomics timed against the kernel before them (988d54b), then the Gluon v2
# patch (experiments/bench/H200_fifth_session/gluon_scan_v2.patch) in a copy of the tree: its float64
# GPU tests, then its timings. Each step only while time is left (DEADLINE_S from the script's start).
set -u
started=$(date +%s); left() { echo $(( ${DEADLINE_S:-300} - ($(date +%s) - started) )); }
root=$PWD
(( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 scripts/gpu_scan_tiles.py --before logs/calls/kept_triton_scan.py --budget-s 45 \
  > $OUT/scan_relaxed.log 2>&1; mv -f $OUT/scan_tiles.log $OUT/scan_tiles_relaxed.log 2>/dev/null
rm -rf /tmp/v2 && mkdir /tmp/v2 && cp -r src tests scripts conf experiments pyproject.toml /tmp/v2/ && cd /tmp/v2 \
  && git apply experiments/bench/H200_fifth_session/gluon_scan_v2.patch || { echo "v2 patch did not apply"; exit 1; }
export PYTHONPATH=/tmp/v2/src:${PYTHONPATH:-}
(( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 -m pytest -q -m gpu tests/test_kernels.py -k "selective_scan_gpu or gluon" \
  -p no:cacheprovider > $OUT/gluon_v2_pytest.log 2>&1
(( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 scripts/gpu_scan_tiles.py --budget-s 90 > $OUT/gluon_v2_tiles.log 2>&1
mv -f $OUT/scan_tiles.log $OUT/scan_tiles_gluon_v2.log 2>/dev/null
echo "== scan checks done in $(( $(date +%s) - started )) s"
tail -6 $OUT/gluon_v2_pytest.log 2>/dev/null
grep -E "^\|" $OUT/scan_relaxed.log | tail -8; grep -E "^\|" $OUT/gluon_v2_tiles.log | tail -12
