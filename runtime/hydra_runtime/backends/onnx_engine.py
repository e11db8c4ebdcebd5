"""An ONNX Runtime session behind the Engine interface (the decode backend and `verify` use it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, HydraExportError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    # TF32 off: fp32 engines compute in fp32 on the GPU as on the CPU (fp16/bf16 engines are unaffected).
    "cuda": [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"],
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise HydraExportError(
            "onnxruntime is not installed; install the CPU engine runtime with "
            "`pip install 'hydra-export[cpu]'` (or `[gpu]` for onnxruntime-gpu)"
        ) from None
    return onnxruntime


def check_provider(provider: str):
    """ONNX Runtime, once it is known to offer ``provider`` ("cpu" | "cuda") here."""
    ort = import_onnxruntime()
    if provider not in PROVIDERS:
        raise HydraExportError(f"unknown provider {provider!r} for ONNX Runtime; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider][0][0] if isinstance(PROVIDERS[provider][0], tuple) else PROVIDERS[provider][0]
    if wanted not in ort.get_available_providers():
        raise HydraExportError(
            f"ONNX Runtime here has no {wanted} (available: {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu (`pip install 'hydra-export[gpu]'`) on a machine with an NVIDIA GPU, "
            "or use the cpu backend"
        )
    return ort


class OnnxEngine:
    def __init__(self, path: Path, provider: str = "cpu", threads: int | None = None):
        self.ort = ort = check_provider(provider)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns plan one block per set of input shapes, and the engine's shapes change every
        # step (the cached length grows): ~10 MB more resident after 200 tokens, no faster.
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=PROVIDERS[provider])
        except Exception as error:  # ORT raises its own exception types
            raise ArtifactError(f"ONNX Runtime could not load {path}: {error}") from None
        self.input_names = tuple(node.name for node in self.session.get_inputs())
        self.output_names = tuple(node.name for node in self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))
