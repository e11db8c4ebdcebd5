"""`hydra-export verify`: every graph in ONNX Runtime against its PyTorch module, then an
end-to-end greedy run of the runtime against the PyTorch reference decoder. Artifacts with
TensorRT plans also get each plan against ONNX Runtime (Polygraphy) and Hydra decoding on
the plans against autoregressive decoding on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hydra_runtime.generator import Generator
from hydra_runtime.manifest import Manifest
from hydra_runtime.sampling import SamplingConfig
from hydra_runtime.tree import TreeBuffers

from .artifact_builder import DTYPES
from .base_model import load_base_model
from .decoding.reference_decoder import ReferenceDecoder
from .export.graph_specs import TorchEngine, build_graph_specs
from .heads.reference_formats import load_heads
from .output_comparison import OutputComparison, compare_outputs

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
SAMPLE_PROMPT = "Explain in two sentences why the sky is blue."


@dataclass
class VerifyReport:
    comparisons: list[OutputComparison] = field(default_factory=list)
    runtime_tokens: list[int] = field(default_factory=list)
    reference_tokens: list[int] = field(default_factory=list)
    tolerance: float = 0.0
    polygraphy_passed: bool = True  # TensorRT vs ONNX Runtime, by Polygraphy's own comparison
    tensorrt_tokens: dict[str, list[int]] = field(default_factory=dict)  # mode -> tokens, on the plans

    @property
    def lossless(self) -> bool:
        tensorrt = self.tensorrt_tokens.get("hydra") == self.tensorrt_tokens.get("autoregressive")
        return self.runtime_tokens == self.reference_tokens and tensorrt

    @property
    def passed(self) -> bool:
        numeric = all(
            (c.exact if c.exact is not None else c.max_abs_error <= self.tolerance) for c in self.comparisons
        )
        return numeric and self.polygraphy_passed and self.lossless


@torch.no_grad()
def verify_artifact(
    artifact_dir: Path, model: str | None = None, tolerance: float | None = None,
    max_new_tokens: int = 32, progress=None,
) -> VerifyReport:
    report_stage = progress or (lambda description: None)
    artifact_dir = Path(artifact_dir)
    manifest = Manifest.read(artifact_dir)
    dtype_name = manifest.data["dtype"]
    report = VerifyReport(tolerance=tolerance if tolerance is not None else DEFAULT_TOLERANCE[dtype_name])

    report_stage("load the PyTorch reference")
    base = load_base_model(model or manifest.data["base_model"]["name"])
    heads = load_heads(artifact_dir / manifest.data["heads"]["directory"], base.config)
    tree = TreeBuffers.from_choices(manifest.tree_choices)
    dtype = DTYPES[dtype_name]
    base.model.to(dtype)
    heads.to(dtype)
    sampling = bool(manifest.data.get("sampling"))
    specs = {spec.name: spec
             for spec in build_graph_specs(base, heads, tree, manifest.max_seq_len, dtype, sampling=sampling)}

    report_stage("compare every graph with ONNX Runtime")
    generator = Generator.load(artifact_dir, backend="cpu", verify_checksums=False)
    engines = generator.backend.engines  # its plain ONNX Runtime sessions, for output-by-output checks
    prompt_ids = generator.encode(SAMPLE_PROMPT)[: manifest.max_seq_len // 2]
    feeds_by_graph = {}
    for suffix, controls in (("", {}), ("_sample", SamplingConfig(temperature=0.8).engine_feeds(0.6))):
        if "prefill" + suffix not in specs:
            continue
        prefill_feeds = {"input_ids": np.asarray(prompt_ids, dtype=np.int64), **controls}
        torch_prefill = TorchEngine(specs["prefill" + suffix]).run(prefill_feeds)
        onnx_prefill = engines["prefill" + suffix].run(prefill_feeds)
        report.comparisons += compare_outputs("prefill" + suffix, onnx_prefill, torch_prefill)
        feeds_by_graph["prefill" + suffix] = prefill_feeds
        for name in ("step" + suffix, "decode" + suffix):
            engine = engines[name]
            past = {key.replace("present.", "past_key_values."): value
                    for key, value in torch_prefill.items() if key.startswith("present.")}
            feeds = {key: value for key, value in past.items() if key in engine.input_names} | controls
            tokens = torch_prefill["tree_tokens"]
            feeds["tree_tokens"] = tokens if name.startswith("step") else tokens[:1]
            report.comparisons += compare_outputs(name, engine.run(feeds), TorchEngine(specs[name]).run(feeds))
            feeds_by_graph[name] = feeds

    if "tensorrt" in manifest.data:
        from .tensorrt_verifier import compare_plans, hydra_and_autoregressive_tokens

        report_stage("compare every TensorRT plan with ONNX Runtime (Polygraphy)")
        rows, report.polygraphy_passed = compare_plans(artifact_dir, manifest, feeds_by_graph, report.tolerance)
        report.comparisons += rows
        hydra, autoregressive = hydra_and_autoregressive_tokens(artifact_dir, prompt_ids, max_new_tokens)
        report.tensorrt_tokens = {"hydra": hydra, "autoregressive": autoregressive}

    report_stage("end-to-end greedy generation: runtime vs PyTorch reference")
    report.runtime_tokens, _ = generator.generate_ids(prompt_ids, max_new_tokens)
    decoder = ReferenceDecoder(base, heads, tree, max_seq_len=manifest.max_seq_len)
    result = decoder.generate(prompt_ids, max_new_tokens, eos_token_ids=tuple(manifest.eos_token_ids))
    report.reference_tokens = result.tokens
    return report
