"""`hydra-export verify`: every graph in ONNX Runtime against its PyTorch module, then an
end-to-end greedy run of the runtime against the PyTorch reference decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hydra_runtime.generator import Generator
from hydra_runtime.manifest import Manifest
from hydra_runtime.onnx_engine import LazyEngines
from hydra_runtime.sampling import SamplingConfig
from hydra_runtime.tree import TreeBuffers

from .artifact_builder import DTYPES
from .base_model import load_base_model
from .decoding.reference_decoder import ReferenceDecoder
from .export.graph_specs import TorchEngine, build_graph_specs
from .heads.reference_formats import load_heads

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
SAMPLE_PROMPT = "Explain in two sentences why the sky is blue."


@dataclass
class OutputComparison:
    graph: str
    output: str
    max_abs_error: float
    max_rel_error: float
    exact: bool | None  # integer outputs: identical or not; None for float outputs


@dataclass
class VerifyReport:
    comparisons: list[OutputComparison] = field(default_factory=list)
    runtime_tokens: list[int] = field(default_factory=list)
    reference_tokens: list[int] = field(default_factory=list)
    tolerance: float = 0.0

    @property
    def lossless(self) -> bool:
        return self.runtime_tokens == self.reference_tokens

    @property
    def passed(self) -> bool:
        numeric = all(
            (c.exact if c.exact is not None else c.max_abs_error <= self.tolerance) for c in self.comparisons
        )
        return numeric and self.lossless


def _compare(graph: str, ours: dict, theirs: dict) -> list[OutputComparison]:
    rows = []
    for name, expected in theirs.items():
        got = ours[name]
        if np.issubdtype(expected.dtype, np.integer):
            rows.append(OutputComparison(graph, name, 0.0, 0.0, bool(np.array_equal(got, expected))))
            continue
        expected64, got64 = expected.astype(np.float64), got.astype(np.float64)
        error = np.abs(got64 - expected64)
        relative = error / np.maximum(np.abs(expected64), 1e-6)
        rows.append(OutputComparison(graph, name, float(error.max(initial=0)), float(relative.max(initial=0)), None))
    return rows


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
    engines = LazyEngines(artifact_dir, {name: entry.file for name, entry in manifest.graphs.items()})
    prompt_ids = generator.encode(SAMPLE_PROMPT)[: manifest.max_seq_len // 2]
    for suffix, controls in (("", {}), ("_sample", SamplingConfig(temperature=0.8).engine_feeds(0.6))):
        if "prefill" + suffix not in specs:
            continue
        prefill_feeds = {"input_ids": np.asarray(prompt_ids, dtype=np.int64), **controls}
        torch_prefill = TorchEngine(specs["prefill" + suffix]).run(prefill_feeds)
        onnx_prefill = engines["prefill" + suffix].run(prefill_feeds)
        report.comparisons += _compare("prefill" + suffix, onnx_prefill, torch_prefill)
        for name in ("step" + suffix, "decode" + suffix):
            engine = engines[name]
            past = {key.replace("present.", "past_key_values."): value
                    for key, value in torch_prefill.items() if key.startswith("present.")}
            feeds = {key: value for key, value in past.items() if key in engine.input_names} | controls
            tokens = torch_prefill["tree_tokens"]
            feeds["tree_tokens"] = tokens if name.startswith("step") else tokens[:1]
            report.comparisons += _compare(name, engine.run(feeds), TorchEngine(specs[name]).run(feeds))

    report_stage("end-to-end greedy generation: runtime vs PyTorch reference")
    report.runtime_tokens, _ = generator.generate_ids(prompt_ids, max_new_tokens)
    decoder = ReferenceDecoder(base, heads, tree, max_seq_len=manifest.max_seq_len)
    result = decoder.generate(prompt_ids, max_new_tokens, eos_token_ids=tuple(manifest.eos_token_ids))
    report.reference_tokens = result.tokens
    return report
