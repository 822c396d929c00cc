#!/usr/bin/env bash
# The 2-GPU smoke test for users' CI: serves a model with `rrun --nproc-per-node N rrank -tp N`,
# checks completions and a streaming chat, checks that TP=N greedy output equals TP=1's, checks
# with nvidia-smi that every GPU holds about the same memory (within 10%) and what rrank reports
# (/metrics), shuts down, and prints one verdict line. Exit 0 on pass, 1 on fail.
#
# Usage: scripts/smoke-2gpu.sh [--bin DIR] [--model DIR] [--nproc-per-node N] [--port P]
#   --bin    folder with rrun and rrank (default: next to `rrun` on PATH, else target/release)
#   --model  a Llama-family HF folder with tokenizer.json (default: a small random one is made
#            with python3 + transformers in $TMPDIR)
#   --dtype  float32 (default: exact enough that -tp N and -tp 1 pick the same greedy tokens;
#            in bfloat16 the different reduction order may flip near-ties), bfloat16, float16
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BIN="" MODEL="" N=2 PORT=8765 DTYPE=float32
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --nproc-per-node) N="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "smoke: unknown argument $1 (see --help)"; exit 1 ;;
  esac
done
if [ -z "$BIN" ]; then
  if command -v rrun >/dev/null; then BIN="$(dirname "$(command -v rrun)")"; else BIN="$here/../target/release"; fi
fi
RRUN="$BIN/rrun" RRANK="$BIN/rrank"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rrun-smoke.XXXXXX")"
LOG="$WORK/server.log"
fail() { echo "SMOKE FAIL: $*"; [ -f "$LOG" ] && { echo "--- last server lines:"; tail -n 15 "$LOG"; }; stop; exit 1; }
SERVER=""
stop() { if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then kill -TERM "$SERVER"; wait "$SERVER"; fi; SERVER=""; }
trap 'stop' EXIT

for b in "$RRUN" "$RRANK"; do [ -x "$b" ] || { echo "SMOKE FAIL: $b is not an executable (use --bin DIR)"; exit 1; }; done
if [ -z "$MODEL" ]; then
  MODEL="$WORK/model"
  python3 "$here/make_gpu_model.py" smoke "$MODEL" >/dev/null || { echo "SMOKE FAIL: could not make a random model (python3 with torch and transformers needed, or pass --model)"; exit 1; }
fi

echo "== record"
echo "rrun: $("$RRUN" --version)"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || fail "nvidia-smi failed"
nvidia-smi | grep -o "CUDA Version: [0-9.]*" | head -1
echo "model: $MODEL"
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print('config:', {k: c.get(k) for k in ('architectures','hidden_size','num_hidden_layers','num_attention_heads','num_key_value_heads','vocab_size','torch_dtype')})" "$MODEL/config.json"
env | grep -E '^(CUDA_VISIBLE_DEVICES|NCCL_[A-Z_]*)=' || true

api() { curl -sS --max-time 60 -H 'Content-Type: application/json' "http://127.0.0.1:$PORT$1" ${2:+-d "$2"}; }
serve() { # serve NPROC TP
  : >"$LOG"
  "$RRUN" --standalone --nproc-per-node "$1" "$RRANK" --model "$MODEL" --served-model-name smoke \
    -tp "$2" --port "$PORT" --dtype "$DTYPE" >>"$LOG" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$SERVER" 2>/dev/null; then
      wait "$SERVER"; rc=$?
      fail "the server exited with code $rc before /health answered ($1 ranks, -tp $2): $(grep -m1 'rrank: error' "$LOG" || echo 'see the log below')"
    fi
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && return 0
    sleep 0.5
  done
  fail "no /health 200 within 300 s"
}
PROMPT='{"model":"smoke","prompt":"The capital of France is","max_tokens":24,"temperature":0}'
text() { python3 -c "import json,sys; print(json.load(sys.stdin)['choices'][0]['text'])"; }

echo "== serve: $N ranks, -tp $N"
t0=$(date +%s)
serve "$N" "$N"
echo "up in $(( $(date +%s) - t0 )) s"
grep -E "rrank: (rank|NCCL)" "$LOG"
OUT_N="$(api /v1/completions "$PROMPT" | text)" || fail "completion request failed"
echo "completion (tp $N): $OUT_N"
CHAT='{"model":"smoke","messages":[{"role":"user","content":"Say hi"}],"max_tokens":16,"stream":true,"temperature":0}'
STREAM="$(api /v1/chat/completions "$CHAT")" || fail "streaming chat request failed"
echo "$STREAM" | grep -q '^data: \[DONE\]' || fail "the chat stream did not end with data: [DONE]"
CHUNKS=$(echo "$STREAM" | grep -c '"delta"')
[ "$CHUNKS" -ge 2 ] || fail "the chat stream had $CHUNKS chunks"
echo "streaming chat: $CHUNKS chunks, ended with [DONE]"

echo "== memory"
METRICS="$(api /metrics)"
mapfile -t USED < <(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n "$N")
echo "nvidia-smi used MiB: ${USED[*]}"
python3 - "$N" "${USED[@]}" <<PY || fail "GPU memory check failed (see above)"
import re, sys
n = int(sys.argv[1]); smi = [float(x) for x in sys.argv[2:2 + n]]
m = """$METRICS"""
rep = {int(r): float(v) / 2**20 for r, v in re.findall(r'rrun:rank_used_bytes\{rank="(\d+)"\} (\S+)', m)}
print("rrank reports used MiB:", [round(rep.get(i, 0)) for i in range(n)])
ok = max(smi) <= 1.1 * min(smi)
print(f"spread across GPUs: {max(smi) / min(smi) - 1:.1%} (limit 10%)")
for i in range(n):
    r = rep.get(i)
    if r is None or abs(smi[i] - r) > 0.1 * smi[i]:
        print(f"GPU {i}: nvidia-smi {smi[i]:.0f} MiB vs reported {r} MiB"); ok = False
sys.exit(0 if ok else 1)
PY
stop
echo "== serve: 1 rank, -tp 1 (reference)"
serve 1 1
OUT_1="$(api /v1/completions "$PROMPT" | text)" || fail "completion request failed at tp 1"
echo "completion (tp 1): $OUT_1"
stop
[ "$OUT_N" = "$OUT_1" ] || fail "greedy output at -tp $N differs from -tp 1"
echo "SMOKE PASS: $N GPUs, -tp $N serves, streams, matches -tp 1, memory even across GPUs"
