#!/usr/bin/env bash
# One call's worth of GPU verification and benchmarking, in the order that pays off when
# machine time is short: make the random 8B checkpoint and transformers' references, check
# correctness (tiny models in float32, the 8B in bf16/float32, decode-path variants with their
# speeds), stop if the tiny models disagree with transformers, then the serving benchmark for
# each -tp, and the 2-GPU smoke test when there are 2+ GPUs. Every stage has a time limit so a
# hang costs one stage, not the call. Results land in OUT (default $OUT or ./gpu-session).
#
# With --profile, two more serving runs with RRANK_PROFILE=1 (kernel time tables in their
# logs): batch 1 (512-token prompts, then decode) and 256 concurrent requests.
#
# Usage: scripts/gpu-session.sh --bin DIR_WITH_rrun_rrank_rrun-bench [--tp 1,2] [--out DIR]
#                               [--checks tiny,8b,decode] [--profile]
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target/release tp=1,2 out="${OUT:-gpu-session}" checks=tiny,8b,decode profile=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --tp) tp="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --checks) checks="$2"; shift 2 ;;
    --profile) profile=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
export RRUN_KERNEL_CACHE="${RRUN_KERNEL_CACHE:-/tmp/rrun-kernels}" PYTHONUNBUFFERED=1
ngpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
"$bin/rrun" --version; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$bin/rrank" kernels --resources --arch "sm_$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)" \
  > "$out/kernel-resources.txt" 2>&1 || true
case ",$checks," in
  *,8b,*) timeout 120 python3 scripts/gpu_check.py --prepare 2>&1 | grep -v Writing | tail -2 ;;
  *) timeout 120 python3 scripts/make_gpu_model.py 8b /tmp/rrun-llama3-8b-random 2>&1 | grep -v Writing | tail -1 ;;
esac
timeout 300 python3 scripts/gpu_check.py --bin "$bin" --only "$checks" --json "$out/check.json" 2>&1 \
  | grep -v Writing | cut -c1-600
if ! python3 -c "import json,sys; r=json.load(open('$out/check.json')); sys.exit(0 if all(x['ok'] for x in r if x['check'].startswith('tiny')) else 1)"; then
  echo "gpu-session: the tiny models disagree with transformers; no benchmark"
  exit 1
fi
# A bf16 8B check that fails points at the tensor-core prefill kernel: benchmark without it.
if ! python3 -c "import json,sys; r=json.load(open('$out/check.json')); sys.exit(0 if all(x['ok'] for x in r if x['check'].startswith('8b bfloat16')) else 1)"; then
  echo "gpu-session: a bf16 8B check failed; benchmarking with RRANK_PREFILL_ATTENTION=cuda-cores"
  export RRANK_PREFILL_ATTENTION=cuda-cores
fi
timeout 330 python3 scripts/bench_gpu.py --bin "$bin" --tp "$tp" --out "$out/bench" 2>&1 | grep -v Writing
grep -h "start-up\|steps:\|step phases" "$out"/bench/server-tp*.log
if [ "$profile" = 1 ]; then
  for c in 1 256; do
    RRANK_PROFILE=1 timeout 200 python3 scripts/bench_gpu.py --bin "$bin" --tp "${tp%%,*}" --concurrency $c \
      --out "$out/profile-c$c" 2>&1 | grep -v Writing | tail -2
    sed -n '/kernel profile/,$p' "$out/profile-c$c/server-tp${tp%%,*}.log" | head -40
  done
fi
if [ "$ngpu" -ge 2 ]; then
  timeout 100 bash scripts/smoke-2gpu.sh --bin "$bin" 2>&1 | grep -E "SMOKE|spread"
fi
echo "gpu-session: results in $out"
