"""`hydra-export build --target tensorrt`: the TensorRT plan of the artifact's engine graph.

Networks are strongly typed, so precision is the ONNX graph's own (build with --dtype fp16
or bf16 for GPUs): TensorRT 11 builds nothing else and has no precision flags; TensorRT
10 is asked for strong typing by its creation flag. One plan (the artifact's one engine)
with one optimization profile spans prompts of 0..max_seq_len-1 tokens, trees of 1..N
nodes and KV caches from empty to full. The timing cache is shared across builds (and a
copy kept in the artifact), so rebuilds skip the kernel timing they have done before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hydra_runtime.backends.decode_backend import STAGED_CAUSAL_TOKENS
from hydra_runtime.backends.tensorrt_backend import import_tensorrt
from hydra_runtime.engine import COPY_NODES, NEW_TOKENS, PAST_SEQUENCE, TREE_NODES
from hydra_runtime.manifest import Manifest, TensorRTPlan, TensorSpec

from .default_models import cache_root
from .errors import HydraExportError

TIMING_CACHE_FILE = "timing.cache"


@dataclass(frozen=True)
class TensorRTOptions:
    timing_cache: Path | None = None  # None: $HYDRA_EXPORT_CACHE/tensorrt/timing.cache
    optimization_level: int = 3  # TensorRT's builder_optimization_level, 0..5
    opt_past_len: int = 512  # the cache length TensorRT tunes kernels for

    @property
    def timing_cache_path(self) -> Path:
        return Path(self.timing_cache) if self.timing_cache else cache_root() / "tensorrt" / TIMING_CACHE_FILE


def check_tensorrt_available() -> str:
    """Fail before any tracing if plans cannot be built here; returns TensorRT's version."""
    from hydra_runtime.backends.choice import gpu_count

    trt = import_tensorrt()
    if not gpu_count():
        raise HydraExportError("--target tensorrt needs an NVIDIA GPU (TensorRT tunes plans on the GPU they "
                               "will run on) and none is visible here; build --target onnx instead")
    return trt.__version__


BF16_COMPUTE_CAPABILITY = (8, 0)  # Ampere and later have bf16 tensor cores


def default_tensorrt_dtype() -> str:
    """bf16 where the GPU computes it natively (fp16's 65,504 ceiling overflows in some models'
    activations; bf16 has fp32's range), else fp16. Fails like any TensorRT build without a GPU."""
    from hydra_runtime.backends.cuda_runtime import CudaRuntime

    check_tensorrt_available()
    return "bf16" if CudaRuntime.load().compute_capability(0) >= BF16_COMPUTE_CAPABILITY else "fp16"


def profile_shapes(inputs: tuple[TensorSpec, ...], max_seq_len: int, tree_nodes: int, copy_nodes: int,
                   options: TensorRTOptions) -> dict[str, list[list[int]]]:
    """min / opt / max shape of every input with symbolic dims (from the manifest's engine entry).

    Prompt chunks of 0..STAGED_CAUSAL_TOKENS causal tokens, trees of 1..N nodes and copy chains of 0..C
    (tuned for the whole tree and chain, the steady state), caches from empty to full. A tree without
    a chain has a static copy_tokens [0], which needs no profile.
    """
    ranges = {
        NEW_TOKENS: (0, 0, min(STAGED_CAUSAL_TOKENS, max_seq_len - 1)),  # the backend feeds prompts in chunks
        TREE_NODES: (1, tree_nodes, tree_nodes),
        COPY_NODES: (0, copy_nodes, copy_nodes),
        PAST_SEQUENCE: (0, min(options.opt_past_len, max_seq_len - 1), max_seq_len - 1),
    }
    shapes = {}
    for spec in inputs:
        symbolic = [dim for dim in spec.shape if isinstance(dim, str)]
        if not symbolic:
            continue
        unknown = set(symbolic) - set(ranges)
        if unknown:
            raise HydraExportError(f"input {spec.name} has symbolic dims {sorted(unknown)} that no TensorRT "
                                   f"profile covers (known: {', '.join(ranges)})")
        shapes[spec.name] = [[ranges[dim][k] if isinstance(dim, str) else dim for dim in spec.shape]
                             for k in range(3)]
    return shapes


def _network_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 10; implied in 11
    return 1 << int(flag) if flag is not None else 0


def build_plan(staging: Path, manifest: Manifest, options: TensorRTOptions,
               report=lambda description: None) -> TensorRTPlan:
    """Write ``engine.plan`` beside ``engine.onnx`` in ``staging``; returns the manifest's tensorrt section."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = options.timing_cache_path
    reused = cache_path.is_file()
    timing_cache = builder.create_builder_config().create_timing_cache(cache_path.read_bytes() if reused else b"")
    report("TensorRT: build the engine plan")
    start = time.perf_counter()
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(staging / manifest.engine.file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HydraExportError(f"TensorRT could not parse {manifest.engine.file}: {errors}")
    config = builder.create_builder_config()
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        raise HydraExportError(f"TensorRT refused the timing cache {cache_path}; delete it and build again")
    config.builder_optimization_level = options.optimization_level
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(manifest.engine.inputs, manifest.max_seq_len, manifest.tree.num_nodes,
                            manifest.tree.copy_nodes, options)
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise HydraExportError("TensorRT rejected the engine's optimization profile (its log above says why)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise HydraExportError("TensorRT failed to build the engine plan (its log above says why)")
    plan_file = Path(manifest.engine.file).with_suffix(".plan").name
    (staging / plan_file).write_bytes(bytes(plan))
    (staging / TIMING_CACHE_FILE).write_bytes(bytes(timing_cache.serialize()))
    _replace_atomically(cache_path, staging / TIMING_CACHE_FILE)
    return TensorRTPlan(version=trt.__version__, plan=plan_file, optimization_level=options.optimization_level,
                        build_seconds=round(time.perf_counter() - start, 2), profile=shapes,
                        timing_cache=TIMING_CACHE_FILE, reused_timing_cache=reused)


def _replace_atomically(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)
