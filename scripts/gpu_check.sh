#!/usr/bin/env bash
# The GPU acceptance check (issue #5), for one NVIDIA GPU and no network; about 5-8 minutes on an H200.
#
#   scripts/gpu_check.sh [OUT_DIR]            (default OUT_DIR: gpu-check)
#
# Needs, already on the machine: `pip install -c constraints-gpu.txt -e ".[build,gpu,dev]"` (onnxruntime-gpu,
# tensorrt, polygraphy), and the default model in $HYDRA_EXPORT_CACHE (run `hydra-export pull` once where
# there is network and copy the cache over). PROMPTS overrides the MT-Bench file.
#
# Steps: build the default model's artifact for TensorRT (fp16), verify it (Polygraphy against ONNX Runtime,
# Hydra against autoregressive on the plan), run the GPU-marked tests, then bench 20 MT-Bench prompts with
# Hydra++ against autoregressive decoding on the same engine, on TensorRT and on ONNX Runtime CUDA.
# Prints one JSON summary and leaves the reports in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
prompts=${PROMPTS:-data/mt_bench.jsonl}
mkdir -p "$out"

"${PYTHON:-python3}" - <<'PY'
import sys
from hydra_runtime.backends.choice import gpu_count, onnxruntime_has_cuda
missing = [what for what, ok in (("a visible NVIDIA GPU", gpu_count() > 0),
                                 ("onnxruntime-gpu with CUDAExecutionProvider", onnxruntime_has_cuda())) if not ok]
for module in ("tensorrt", "polygraphy"):
    try:
        __import__(module)
    except ImportError:
        missing.append(module)
if missing:
    sys.exit("gpu_check: missing " + ", ".join(missing) + "; see the comment at the top of scripts/gpu_check.sh")
PY

start=$(date +%s)
hydra-export build --target tensorrt --dtype fp16 --force -o "$out/smollm2-trt" 2>&1 | tee "$out/build.log"
build_seconds=$(( $(date +%s) - start ))

hydra-export verify "$out/smollm2-trt" 2>&1 | tee "$out/verify.log"
"${PYTHON:-python3}" -m pytest -m gpu -q 2>&1 | tee "$out/pytest-gpu.log"

for backend in tensorrt cuda; do
  hydra-export bench "$out/smollm2-trt" --prompts "$prompts" --limit 20 --max-new-tokens 256 \
    --backend "$backend" --json "$out/bench-$backend.json" > /dev/null
done

BUILD_SECONDS=$build_seconds OUT="$out" "${PYTHON:-python3}" - <<'PY'
import json, os
from pathlib import Path
out = Path(os.environ["OUT"])
manifest = json.loads((out / "smollm2-trt" / "manifest.json").read_text())
summary = {
    "build_seconds": int(os.environ["BUILD_SECONDS"]),
    "plan_build_seconds": manifest["tensorrt"]["build_seconds"],
    "engine_bytes": (out / "smollm2-trt" / manifest["tensorrt"]["plan"]).stat().st_size,
    "tensorrt_version": manifest["tensorrt"]["version"],
}
for backend in ("tensorrt", "cuda"):
    report = json.loads((out / f"bench-{backend}.json").read_text())["summary"]
    summary[backend] = {
        "hydra_tokens_per_second": report["hydra"]["tokens_per_second"],
        "autoregressive_tokens_per_second": report["autoregressive"]["tokens_per_second"],
        "speedup": report["hydra_over_autoregressive"],
        "mean_accepted_length": report["hydra"]["mean_accepted_length"],
        "lossless": report["lossless"],
    }
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
