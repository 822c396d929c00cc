#!/usr/bin/env bash
# Verifies rrun on a GPU host with real NCCL jobs (used for docs/verified-runs.md).
# Usage: scripts/gpu-verify-rrun.sh [path/to/rrun]   (python3 there must have torch)
set -uo pipefail
cd "$(dirname "$0")/.."
RRUN="${1:-target/release/rrun}"
W=tests/python/workers/nccl_ops.py
TORCHRUN="$(dirname "$(command -v python3)")/torchrun"
fails=0
step() { echo; echo "== $*"; }
check() { if [ "$1" = 0 ]; then echo "PASS: $2"; else echo "FAIL: $2 (rc=$1)"; fails=$((fails+1)); fi; }

step "record"
"$RRUN" --version
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)=' || true

step "rrun --nproc-per-node gpu (NCCL, one process per GPU)"
t=$(date +%s%N); "$RRUN" --standalone --nproc-per-node gpu -t 3 "$W"; rc=$?
echo "wall $(( ($(date +%s%N) - t) / 1000000 )) ms"; check $rc "rrun gpu job"

step "torchrun, same job, for comparison"
t=$(date +%s%N); "$TORCHRUN" --standalone --nproc-per-node gpu -t 3 "$W" 2>&1 | grep -v "^W"; rc=${PIPESTATUS[0]}
echo "wall $(( ($(date +%s%N) - t) / 1000000 )) ms"; check $rc "torchrun gpu job"

step "2-node static on one host: two rrun agents, one GPU each"
P=29611
CUDA_VISIBLE_DEVICES=1 "$RRUN" --nnodes 2 --node-rank 1 --master-port $P -t 3 "$W" & a=$!
CUDA_VISIBLE_DEVICES=0 "$RRUN" --nnodes 2 --node-rank 0 --master-port $P -t 3 "$W"; rc0=$?
wait $a; rc1=$?
check $((rc0 + rc1)) "two rrun agents"

step "2-node static: rrun node 0 + torchrun node 1"
P=29612
CUDA_VISIBLE_DEVICES=1 "$TORCHRUN" --nnodes 2 --node-rank 1 --master-port $P -t 3 "$W" & a=$!
CUDA_VISIBLE_DEVICES=0 "$RRUN" --nnodes 2 --node-rank 0 --master-port $P -t 3 "$W"; rc0=$?
wait $a; rc1=$?
check $((rc0 + rc1)) "rrun + torchrun agents"

step "kill -9 rrun while workers hold GPU memory"
HOLD_SECONDS=60 "$RRUN" --standalone --nproc-per-node 2 "$W" > /tmp/hold.log 2>&1 & r=$!
for _ in $(seq 1 120); do grep -q "OK rank 1" /tmp/hold.log && break; sleep 0.5; done
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
kill -9 $r; sleep 1
left=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)
echo "GPU processes 1 s after kill -9: $left"
[ "$left" = 0 ]; check $? "no orphaned GPU workers"

step "--nproc-per-node 3 on 2 GPUs is caught by the job, not hung"
timeout 120 "$RRUN" --standalone --nproc-per-node 3 --term-timeout 5 "$W" > /tmp/three.log 2>&1; rc=$?
tail -n 25 /tmp/three.log
[ "$rc" = 1 ]; check $? "3 ranks on 2 GPUs fails cleanly with exit 1"

echo; echo "verdict: $fails failure(s)"
exit $((fails > 0))
