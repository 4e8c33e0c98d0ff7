# Shared by the device-call scripts (experiments/bench/H200_*/call_*/call_*.sh): source it after setting
# BUDGET_S (the seconds this call may use, under the device tool's per-call limit).
#   left                    seconds of BUDGET_S still unspent
#   bench SCALE TAG ENTRY [ARGS]
#                           one `python -m flowhn.bench` row into $T/SCALE_TAG.md, cut at LIMIT (default 90)
#                           seconds or at what is left less 5; skipped when under 50 s are left.
#                           STEPS, WARMUP, PEERS override the 135M defaults (20, 6, []).
#   tables                  every row's Markdown into $OUT/tables.md
#   pair NAME               with GPU=0 or 1 set in each of two background subshells: wait (while over 60 s
#                           are left) until the other GPU's subshell reaches `pair NAME` too, so an A/B's two
#                           rows run at the same time (the fifteenth session's calls wrote it out each time)
export PYTHONUNBUFFERED=1
CALL_STARTED=$(date +%s)
T=${T:-/tmp/tables}; mkdir -p "$T"
rm -f /tmp/sync_*  # pair's marks from an earlier call on a warm machine
left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - CALL_STARTED) )); }
bench() {
  local limit=${LIMIT:-90}
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) || { echo "skipped: $(left) s left"; return 1; }
  timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=${PEERS:-[]} "entries=[$3]" ${4:-} output=$T/$1_$2.md \
    hydra.run.dir=/tmp/r_$RANDOM
}
tables() { cat "$T"/*.md > "$OUT/tables.md" 2>/dev/null; }
pair() {
  touch /tmp/sync_${GPU}_$1; local other=$((1 - GPU))
  while [ ! -f /tmp/sync_${other}_$1 ] && (( $(left) > 60 )); do sleep 1; done
}
