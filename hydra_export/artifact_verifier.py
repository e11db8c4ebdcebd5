"""`hydra-export verify`: the engine in ONNX Runtime against its PyTorch module for every kind of
call (prefill, tree step with its copy chain, a tree prefix, autoregressive step, greedy and
sampled), then an
end-to-end greedy run of the runtime against the PyTorch reference decoder. Artifacts with a
TensorRT plan also get the plan against ONNX Runtime (Polygraphy) and Hydra decoding on the
plan against autoregressive decoding on it. bf16 artifacts, which ONNX Runtime cannot run,
get only the plan's checks, with PyTorch as the reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hydra_runtime.backends.decode_backend import is_kv
from hydra_runtime.engine import COPY_TOKENS, INPUT_IDS, NEXT_TREE_TOKENS, PAST_PREFIX, PRESENT_PREFIX, TREE_TOKENS
from hydra_runtime.generator import Generator
from hydra_runtime.manifest import Manifest, inside_artifact
from hydra_runtime.sampling import SamplingConfig, greedy_feeds
from hydra_runtime.tree import TreeBuffers

from .artifact_builder import DTYPES
from .base_model import load_base_model
from .decoding.reference_decoder import ReferenceDecoder
from .errors import HydraExportError
from .export.graph_specs import TorchEngine, build_engine_spec
from .heads.reference_formats import load_heads
from .output_comparison import OutputComparison, compare_outputs

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
# numpy has no bf16: bf16 K/V travel as float32 (exact) and are cast back by the engine runners
KV_NUMPY = {"float": np.float32, "float16": np.float16, "bfloat16": np.float32}
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
        numeric = all(c.within(self.tolerance) for c in self.comparisons)
        return numeric and self.polygraphy_passed and self.lossless


def engine_cases(prompt_ids: list[int], tree: TreeBuffers) -> dict[str, dict]:
    """Feeds for each kind of engine call on ``tree``'s engine, before any K/V exists (the past comes
    from the prefill): name -> (input_ids, tree_tokens, copy_tokens (none at prefill), sampling settings)."""
    uniforms = np.random.default_rng(0).random(tree.num_verified)
    greedy, sampled = greedy_feeds(tree.num_verified), SamplingConfig(temperature=0.8).engine_feeds(uniforms)
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    root = prompt[-1:]
    greedy, sampled = ({COPY_TOKENS: prompt[:0]} | controls for controls in (greedy, sampled))
    return {
        "prefill": {INPUT_IDS: prompt[:-1], TREE_TOKENS: np.repeat(root, tree.num_nodes), **greedy},
        "prefill, sampled": {INPUT_IDS: prompt[:-1], TREE_TOKENS: np.repeat(root, tree.num_nodes), **sampled},
        "prefill, autoregressive": {INPUT_IDS: prompt[:-1], TREE_TOKENS: root, **greedy},
    }


@torch.no_grad()
def verify_artifact(
    artifact_dir: Path, model: str | None = None, tolerance: float | None = None,
    max_new_tokens: int = 32, progress=None,
) -> VerifyReport:
    report_stage = progress or (lambda description: None)
    artifact_dir = Path(artifact_dir)
    manifest = Manifest.read(artifact_dir)
    report = VerifyReport(tolerance=tolerance if tolerance is not None else DEFAULT_TOLERANCE[manifest.dtype])

    bf16 = manifest.dtype == "bf16"
    if bf16 and manifest.tensorrt is None:
        raise HydraExportError(f"{artifact_dir} is bf16 and has no TensorRT plan: ONNX Runtime has no bf16 kernels, so "
                               "nothing can run it; rebuild with --target tensorrt, or with --dtype fp16 or fp32")
    report_stage("load the PyTorch reference")
    dtype = DTYPES[manifest.dtype]
    base = load_base_model(model or manifest.base_model.name, dtype=dtype)
    heads = load_heads(inside_artifact(artifact_dir, manifest.heads["directory"]), base.config).to(dtype)
    tree = manifest.tree_buffers()
    torch_engine = TorchEngine(build_engine_spec(base, heads, tree, manifest.max_seq_len, dtype))

    report_stage("compare the engine with PyTorch, call by call")
    generator = Generator.load(artifact_dir, backend="tensorrt" if bf16 else "cpu", verify_checksums=False)
    onnx_engine = None if bf16 else generator.backend.engine  # its ONNX Runtime session, for output-by-output checks
    prompt_ids = generator.encode(SAMPLE_PROMPT)[: manifest.max_seq_len // 2]
    empty = {name: np.zeros((1, 0, *spec.shape[2:]), dtype=KV_NUMPY[spec.dtype])
             for name, spec in ((spec.name, spec) for spec in manifest.engine.inputs) if is_kv(name)}
    feeds_by_case = {}
    for case, host in engine_cases(prompt_ids, tree).items():
        feeds = host | empty
        expected = torch_engine.run(feeds)
        if onnx_engine is not None:
            report.comparisons += compare_outputs(case, onnx_engine.run(feeds), expected)
        feeds_by_case[case] = feeds
        if case == "prefill":  # then a tree step and an autoregressive step on the prefill's K/V
            past = {name.replace(PRESENT_PREFIX, PAST_PREFIX): value[:, : len(prompt_ids)]
                    for name, value in expected.items() if name.startswith(PRESENT_PREFIX)}
            tree_tokens = expected[NEXT_TREE_TOKENS]
            for step, tokens in (("tree step", tree_tokens), ("tree step, 3 nodes", tree_tokens[:3]),
                                 ("autoregressive step", tree_tokens[:1])):
                # A copy chain taken from the prompt (some of it may even be accepted), none on the AR step.
                copy = np.asarray(prompt_ids[1 : min(tree.copy_nodes, len(tokens) - 1) + 1], dtype=np.int64)
                step += f" + {len(copy)} copies" if len(copy) else ""
                step_feeds = {**host, INPUT_IDS: host[INPUT_IDS][:0], TREE_TOKENS: tokens, COPY_TOKENS: copy} | past
                if onnx_engine is not None:
                    report.comparisons += compare_outputs(step, onnx_engine.run(step_feeds),
                                                          torch_engine.run(step_feeds))
                feeds_by_case[step] = step_feeds

    if manifest.tensorrt is not None:
        from .tensorrt_verifier import compare_plan, hydra_and_autoregressive_tokens

        report_stage(f"compare the TensorRT plan with {'PyTorch' if bf16 else 'ONNX Runtime (Polygraphy)'}")
        rows, report.polygraphy_passed = compare_plan(artifact_dir, manifest, feeds_by_case, report.tolerance,
                                                      torch_engine if bf16 else None)
        report.comparisons += rows
        hydra, autoregressive = hydra_and_autoregressive_tokens(artifact_dir, prompt_ids, max_new_tokens)
        report.tensorrt_tokens = {"hydra": hydra, "autoregressive": autoregressive}

    if bf16:  # the plan's Hydra-vs-autoregressive tokens above are the lossless check at this precision
        generator.close()
        return report
    report_stage("end-to-end greedy generation: runtime vs PyTorch reference")
    report.runtime_tokens, _ = generator.generate_ids(prompt_ids, max_new_tokens)
    decoder = ReferenceDecoder(base, heads, tree, max_seq_len=manifest.max_seq_len)
    result = decoder.generate(prompt_ids, max_new_tokens, eos_token_ids=tuple(manifest.eos_token_ids))
    report.reference_tokens = result.tokens
    generator.close()
    return report
