#!/usr/bin/env bash
# One device call: GPU tests, then the benchmark; logs and JSON under $OUT.
#   bash bench/gpu_session.sh quick   # tests + Llama-2-7B shape, Kiln only, short, with profiles
#   bash bench/gpu_session.sh full    # tests + both shapes, Kiln and HF, every load
#   bash bench/gpu_session.sh bench   # both shapes, no tests
#   bash bench/gpu_session.sh tests   # the GPU tests only (the default tier, at most 4 minutes)
#   bash bench/gpu_session.sh long    # the long GPU sweeps (-m gpu_long)
#   bash bench/gpu_session.sh cold    # cold start of the Llama-3-8B shape: first pod (compiles and
#                                     # tunes), warm, second pod on a fresh cache (kernels and
#                                     # tuning from the store)
#                                     # (KILN_PARALLEL_GRAPH_COMPILE=1: the capture's kernels
#                                     # compile together first, model/kernels/compile_ahead.py)
#   bash bench/gpu_session.sh cold-first  # only cold's first pod, on a fresh node
#   bash bench/gpu_session.sh warmed  # cold start after a build that warmed the store
#                                     # (--warm-startup-cache): the first serving pod and a second
#                                     # one on a fresh folder, neither may tune or compile
#   bash bench/gpu_session.sh ttft    # one prompt's first token in-process (eager, graphs <= 2048,
#                                     # with the device timeline), then through a pod
#   bash bench/gpu_session.sh core    # Llama-3-8B through pods with the thread and the process
#                                     # engine core, beside in-process (issue 14)
#   bash bench/gpu_session.sh pod     # Llama-3-8B through a pod (the default process core) at
#                                     # every issue-14 load, TTFT split around and in the pod
#   bash bench/gpu_session.sh pdl     # batch 1 and 64 x 128/128 with programmatic dependent launch
#                                     # off, on, and on with the start trigger (KILN_PDL,
#                                     # KILN_PDL_TRIGGER; KILN_QUANT=FP8 for that engine)
#   bash bench/gpu_session.sh fp8kv   # decode attention over fp8 (with its launch-shape sweep) and
#                                     # bf16 caches, per layer (issue 13)
#   bash bench/gpu_session.sh fp8kv-load  # the FP8 KV engine beside bf16 KV at 256 x 1024/256, with
#                                         # kernel tables of 256 decodes after 1024-token prompts
#   bash bench/gpu_session.sh quant   # issue 13's engines at their loads, beside bf16, with decode
#                                     # kernel tables at those batches: FP8 + KV FP8 at 256 x
#                                     # 128/128, then W4A16_AWQ at 64 x 128/128
#   bash bench/gpu_session.sh attention  # prefill and decode attention per layer against SDPA,
#                                        # with their launch-shape sweeps (Llama-3-8B heads)
#   bash bench/gpu_session.sh flash   # the triton-flash backend: its GPU tests, then prefill
#                                     # attention per layer (paged, flash prefill, SDPA)
# KILN_ATTENTION=triton bash bench/gpu_session.sh ttft: in-process TTFT on auto and the paged-only
# backend (or =triton-flash: flash for every prefill),
#                                   then the pod's on that one.
# The long sweeps also run when KILN_GPU_LONG=1. bench_cold_start uses rclone serve s3 when its
# binary is on PATH, else a local folder store.
set -u
mode=${1:-quick}
OUT=${OUT:-/tmp/kiln_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD/sdk:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The device has no grpcio-health-checking / grpcio-reflection, which the runtime pod (--grpc
# mode) and the SDK need: carry them as wheels in .whl (bench/NOTES.md says how).
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
cold_start() {        # extra arguments go to bench_cold_start
  rm -rf /tmp/kiln_cold ~/.cache/kiln/builder
  store=local
  if command -v rclone > /dev/null; then store=s3; fi
  timeout 540 python3 bench/bench_cold_start.py --model llama3-8b --device cuda --store "$store" \
    --work-dir /tmp/kiln_cold --json "$OUT/cold_start_llama3-8b.json" "$@" 2>&1 \
    | tee "$OUT/cold_start.log"
  cp /tmp/kiln_cold/pod-*.log "$OUT/" 2>/dev/null
  # The store and the build's copy hold 32 GB of the device's 64 GB disk: the next benchmark's
  # build ran out of space (run 21).
  rm -rf /tmp/kiln_cold ~/.cache/kiln/builder
}
if [ "$mode" = "cold" ]; then
  cold_start
  exit 0
fi
if [ "$mode" = "cold-first" ]; then   # only the first pod on this fresh node (about 4 min)
  cold_start --starts store
  exit 0
fi
if [ "$mode" = "warmed" ]; then
  cold_start --warm-startup-cache --starts store,second_pod
  exit 0
fi
if [ "$mode" = "ttft" ]; then
  timeout 240 python3 bench/bench_prefill.py --model llama3-8b --graph-tokens 0,2048 \
    --attention-backends "auto${KILN_ATTENTION:+,$KILN_ATTENTION}" \
    --json "$OUT/prefill_llama3-8b.json" 2>&1 | tee "$OUT/prefill.log" | tail -20
  timeout 300 python3 bench/bench_decode.py --model llama3-8b --quick --skip-hf --skip-reference \
    --grpc --loads 64x128/128 --attention-backend "${KILN_ATTENTION:-auto}" \
    --json "$OUT/pod_ttft_llama3-8b.json" 2>&1 | tee "$OUT/pod_ttft.log" \
    | grep -i "ttft\|batch-1\|tok/s"
  exit 0
fi
if [ "$mode" = "flash" ]; then
  timeout 240 python3 -m pytest -q -m gpu -n 4 tests/gpu/test_flash_prefill.py \
    tests/gpu/test_rotary_store_kv.py tests/unit/runtime_service/model/test_flash_prefill_cpu.py \
    -p no:cacheprovider -rf 2>&1 | tee "$OUT/pytest_flash.log" | tail -15
  timeout 150 python3 bench/bench_prefill_attention.py --no-sweep --models llama3-8b \
    --json "$OUT/prefill_attention.json" 2>&1 | tee "$OUT/prefill_attention.log" | tail -8
  exit 0
fi
if [ "$mode" = "attention" ]; then
  timeout 280 python3 bench/bench_prefill_attention.py --models llama3-8b \
    --json "$OUT/prefill_attention.json" 2>&1 | tee "$OUT/prefill_attention.log" | tail -8
  timeout 280 python3 bench/bench_attention.py --models llama3-8b \
    --json "$OUT/decode_attention.json" 2>&1 | tee "$OUT/decode_attention.log" | tail -10
  exit 0
fi
if [ "$mode" = "pod" ]; then
  timeout 560 python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference --grpc \
    --loads 64x128/128,256x128/128,256x1024/256 --json "$OUT/pod_llama3-8b.json" 2>&1 \
    | tee "$OUT/pod.log" | grep -i "tok/s\|ttft\|batch-1\|in the pod:\|error\|Traceback" | tail -40
  exit 0
fi
if [ "$mode" = "pdl" ]; then   # programmatic dependent launch off, on, on triggered at the start
  # (kernels/pdl.py): batch 1 and 64 x 128/128; KILN_QUANT=FP8 (or W4A16_AWQ) for a quantized
  # engine. Its bit-for-bit tests run with `tests`.
  for setting in 0-exit 1-exit 1-start; do
    KILN_PDL=${setting%-*} KILN_PDL_TRIGGER=${setting#*-} timeout 190 python3 bench/bench_decode.py \
      --model llama3-8b --quick --skip-hf --skip-reference ${KILN_QUANT:+--quant $KILN_QUANT} \
      --loads 64x128/128 --json "$OUT/pdl${setting}_llama3-8b${KILN_QUANT:+_$KILN_QUANT}.json" \
      2>&1 | tee "$OUT/pdl${setting}.log" | grep -i "tok/s\|batch-1\|error\|Traceback" | tail -8
  done
  exit 0
fi
if [ "$mode" = "fp8kv" ]; then
  # 36 launch shapes a load, each checked against the reference, then timed; one Triton compile
  # per shape and split count
  timeout 380 python3 bench/bench_attention.py --models llama3-8b --kv-cache-dtype fp8 \
    --json "$OUT/decode_attention_fp8.json" 2>&1 | tee "$OUT/decode_attention_fp8.log" | tail -12
  timeout 90 python3 bench/bench_attention.py --models llama3-8b --no-sweep \
    --json "$OUT/decode_attention_bf16.json" 2>&1 | tee "$OUT/decode_attention_bf16.log" | tail -8
  exit 0
fi
if [ "$mode" = "fp8kv-load" ]; then
  timeout 560 python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference \
    --kv-quant FP8 --loads 256x1024/256 --profile "$OUT/fp8kv.txt" --profile-batches 256 \
    --profile-prompt-len 1024 --json "$OUT/fp8kv_256x1024.json" 2>&1 \
    | tee "$OUT/fp8kv_256x1024.log" | grep -i "tok/s\|batch-1\|error\|Traceback" | tail -12
  exit 0
fi
if [ "$mode" = "quant" ]; then
  timeout 290 python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference \
    --quant FP8 --kv-quant FP8 --loads 256x128/128 --profile "$OUT/fp8.txt" \
    --profile-batches 1,256 --json "$OUT/quant_fp8.json" 2>&1 | tee "$OUT/quant_fp8.log" \
    | grep -i "tok/s\|batch-1\|decode steps\|error\|Traceback" | tail -12
  timeout 290 python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference \
    --quant W4A16_AWQ --loads 64x128/128 --profile "$OUT/int4.txt" --profile-batches 1,64 \
    --json "$OUT/quant_int4.json" 2>&1 | tee "$OUT/quant_int4.log" \
    | grep -i "tok/s\|batch-1\|decode steps\|error\|Traceback" | tail -12
  exit 0
fi
if [ "$mode" = "core" ]; then
  timeout 580 python3 bench/bench_decode.py --model llama3-8b --skip-hf --skip-reference --grpc \
    --grpc-engine-core thread,process --json "$OUT/engine_core_llama3-8b.json" 2>&1 \
    | tee "$OUT/engine_core.log"
  python3 bench/bench_core_codec.py --json "$OUT/core_codec.json" 2>&1 | tee -a "$OUT/engine_core.log"
  exit 0
fi
if [ "$mode" = "long" ] || [ "${KILN_GPU_LONG:-0}" = "1" ]; then
  timeout 570 python3 -m pytest -q -m gpu_long tests -p no:cacheprovider \
    --continue-on-collection-errors --durations=8 -rf 2>&1 | tee "$OUT/pytest_gpu_long.log" | tail -60
  [ "$mode" = "long" ] && exit 0
fi
if [ "$mode" != "bench" ]; then
  # Eight workers: a fresh machine's tier is mostly Triton compiling kernels, one per process.
  timeout 270 python3 -m pytest -q -m gpu -n 8 tests -p no:cacheprovider \
    --continue-on-collection-errors --durations=12 -rf 2>&1 | tee "$OUT/pytest_gpu.log" | tail -60
  # The tests that need Triton but no GPU (CI has no Triton): cache keys, the compile pool.
  timeout 120 python3 -m pytest -q tests/unit/runtime_service/model/test_kernel_cache_keys.py \
    tests/unit/runtime_service/model/test_compile_pool.py -p no:cacheprovider -rf 2>&1 \
    | tee "$OUT/pytest_triton_cpu.log" | tail -5
fi
if [ "$mode" = "tests" ]; then
  # Programmatic dependent launch's bit-for-bit tests (off, on, start trigger) are long-tier:
  # three engine processes each; run here, they leave `pdl` its device time for the timing.
  timeout 240 python3 -m pytest -q -m gpu_long -n 3 tests/gpu/test_pdl.py -p no:cacheprovider \
    -rf 2>&1 | tee "$OUT/pytest_pdl.log" | tail -5
  exit 0
elif [ "$mode" = "quick" ]; then
  timeout 300 python3 bench/bench_decode.py --model llama2-7b --quick --skip-hf \
    --json "$OUT/quick_llama2-7b.json" --profile "$OUT/profile.txt" 2>&1 | tee "$OUT/bench_quick.log"
else
  for model in llama2-7b llama3-8b; do
    timeout 420 python3 bench/bench_decode.py --model "$model" --grpc \
      --json "$OUT/bench_$model.json" 2>&1 | tee "$OUT/bench_$model.log"
  done
fi
