"""`hydra-export build --target tensorrt`: TensorRT plans from the artifact's ONNX graphs.

Networks are strongly typed, so precision is the ONNX graph's own (build with --dtype fp16
or bf16 for GPUs): TensorRT 11 builds nothing else and has no precision flags; TensorRT
10 is asked for strong typing by its creation flag. One optimization profile per graph
spans prompts of 1..max_seq_len-1 tokens and KV caches from empty to full. The timing
cache is shared across builds (and a copy kept in the artifact), so rebuilds skip the
kernel timing they have done before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hydra_runtime.engine import PAST_SEQUENCE
from hydra_runtime.backends.tensorrt_backend import import_tensorrt

from .default_models import cache_root
from .errors import HydraExportError

PROMPT_SEQUENCE = "prompt_sequence"  # the symbolic dim of the prefill graphs' input_ids
TIMING_CACHE_FILE = "timing.cache"


@dataclass(frozen=True)
class TensorRTOptions:
    timing_cache: Path | None = None  # None: $HYDRA_EXPORT_CACHE/tensorrt/timing.cache
    optimization_level: int = 3  # TensorRT's builder_optimization_level, 0..5
    opt_prompt_len: int = 128  # the shapes TensorRT tunes kernels for
    opt_past_len: int = 512

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


def profile_shapes(inputs: list[dict], max_seq_len: int, options: TensorRTOptions) -> dict[str, list[list[int]]]:
    """min / opt / max shape of every input with symbolic dims (from a manifest graph entry)."""
    ranges = {
        PROMPT_SEQUENCE: (1, min(options.opt_prompt_len, max_seq_len - 1), max_seq_len - 1),
        PAST_SEQUENCE: (0, min(options.opt_past_len, max_seq_len - 1), max_seq_len - 1),
    }
    shapes = {}
    for spec in inputs:
        symbolic = [dim for dim in spec["shape"] if isinstance(dim, str)]
        if not symbolic:
            continue
        unknown = set(symbolic) - set(ranges)
        if unknown:
            raise HydraExportError(f"input {spec['name']} has symbolic dims {sorted(unknown)} that no TensorRT "
                                   f"profile covers (known: {', '.join(ranges)})")
        shapes[spec["name"]] = [[ranges[dim][k] if isinstance(dim, str) else dim for dim in spec["shape"]]
                                for k in range(3)]
    return shapes


def _network_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 10; implied in 11
    return 1 << int(flag) if flag is not None else 0


def build_plans(staging: Path, manifest: dict, options: TensorRTOptions, report=lambda description: None) -> dict:
    """Write ``<graph>.plan`` beside each ``<graph>.onnx`` in ``staging``; returns the manifest's tensorrt section."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = options.timing_cache_path
    timing_cache = builder.create_builder_config().create_timing_cache(
        cache_path.read_bytes() if cache_path.is_file() else b"")
    section = {"version": trt.__version__, "strongly_typed": True, "optimization_level": options.optimization_level,
               "timing_cache": TIMING_CACHE_FILE, "reused_timing_cache": cache_path.is_file(),
               "plans": {}, "profiles": {}, "build_seconds": {}}
    for graph, entry in manifest["graphs"].items():
        report(f"TensorRT: build the {graph} plan")
        start = time.perf_counter()
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(staging / entry["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise HydraExportError(f"TensorRT could not parse {entry['file']}: {errors}")
        config = builder.create_builder_config()
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        config.builder_optimization_level = options.optimization_level
        profile = builder.create_optimization_profile()
        shapes = profile_shapes(entry["inputs"], manifest["max_seq_len"], options)
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise HydraExportError(f"TensorRT failed to build the {graph} plan (its log above says why)")
        (staging / f"{graph}.plan").write_bytes(bytes(plan))
        section["plans"][graph] = f"{graph}.plan"
        section["profiles"][graph] = shapes
        section["build_seconds"][graph] = round(time.perf_counter() - start, 2)
    serialized = bytes(timing_cache.serialize())
    (staging / TIMING_CACHE_FILE).write_bytes(serialized)
    _replace_atomically(cache_path, staging / TIMING_CACHE_FILE)
    return section


def _replace_atomically(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)
