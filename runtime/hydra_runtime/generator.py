"""The runtime's front door: load an artifact directory and generate from it (no torch)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends.choice import open_backend
from .chat_tokenizer import ChatTokenizer
from .backends.decode_backend import DecodeBackend
from .decode_loop import DecodeStats, GraphNames, StopRule, decode
from .errors import GenerationInputError
from .manifest import Manifest
from .sampling import SamplingConfig
from .text_stream import TextStream
from .tree import TreeBuffers

MODES = ("hydra", "autoregressive")


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    stats: DecodeStats


class Generator:
    def __init__(self, manifest: Manifest, tokenizer: ChatTokenizer, backend: DecodeBackend):
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.backend = backend  # runs the "prefill" | "step" | "decode" graphs (+ "_sample" variants)
        self.tree_size = len(manifest.tree_choices) + 1

    @classmethod
    def load(
        cls, artifact_dir: str | Path, backend: str = "auto", threads: int | None = None, verify_checksums: bool = True
    ) -> Generator:
        """``backend``: auto | cpu | cuda (ONNX Runtime) | tensorrt; auto picks the fastest this machine has."""
        artifact_dir = Path(artifact_dir)
        manifest = Manifest.read(artifact_dir, verify_checksums=verify_checksums)
        TreeBuffers.from_choices(manifest.tree_choices)  # a malformed tree is refused here, named
        runner = open_backend(artifact_dir, manifest, backend, threads)
        runner.warm_up("prefill")  # fail now, not at the first prompt, if the engine runtime cannot load it
        return cls(manifest, ChatTokenizer.from_dir(artifact_dir), runner)

    def encode(self, prompt_or_messages) -> list[int]:
        return self.tokenizer.encode_prompt(prompt_or_messages)

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 256, mode: str = "hydra",
                     temperature: float = 0.0, on_tokens=lambda tokens: None, seed: int = 0,
                     sampling: SamplingConfig | None = None) -> tuple[list[int], DecodeStats]:
        """Greedy when temperature is 0 (lossless); otherwise typical acceptance, seeded by ``seed``."""
        if mode not in MODES:
            raise GenerationInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        sampling = sampling or SamplingConfig(temperature=temperature)
        suffix = "" if sampling.greedy else "_sample"
        if "prefill" + suffix not in self.manifest.data["graphs"]:
            raise GenerationInputError(
                "this artifact was built without sampling graphs, so it decodes greedily only (temperature=0); "
                "rebuild it with `hydra-export build --sampling` to sample"
            )
        if max_new_tokens < 1:
            raise GenerationInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        limit = self.manifest.max_seq_len
        if not prompt_ids or len(prompt_ids) >= limit:
            raise GenerationInputError(
                f"the prompt has {len(prompt_ids)} tokens; this artifact accepts 1 to {limit - 1} "
                f"(its maximum sequence length is {limit}). Shorten the prompt or rebuild with a larger --max-seq-len"
            )
        stop = StopRule(max_new_tokens, frozenset(self.manifest.eos_token_ids), limit, len(prompt_ids))
        graphs = GraphNames("prefill" + suffix, "step" + suffix if mode == "hydra" else None, "decode" + suffix)
        rng = np.random.default_rng(seed)
        controls = dict if sampling.greedy else (lambda: sampling.engine_feeds(rng.random()))
        return decode(self.backend, graphs, prompt_ids, stop, self.tree_size, on_tokens, controls)

    def generate(self, prompt_or_messages, max_new_tokens: int = 256, mode: str = "hydra",
                 temperature: float = 0.0, seed: int = 0) -> GenerationOutput:
        ids, stats = self.generate_ids(self.encode(prompt_or_messages), max_new_tokens, mode, temperature, seed=seed)
        return GenerationOutput(self.tokenizer.decode(ids), ids, stats)

    def stream(self, prompt_or_messages, max_new_tokens: int = 256, mode: str = "hydra",
               temperature: float = 0.0, seed: int = 0) -> Iterator[str]:
        """Yields text as tokens are accepted (generation runs on a background thread)."""
        import queue
        import threading

        chunks: queue.Queue = queue.Queue()
        text = TextStream(self.tokenizer.decode)
        prompt_ids = self.encode(prompt_or_messages)
        failure: list[BaseException] = []

        def work():
            try:
                self.generate_ids(prompt_ids, max_new_tokens, mode, temperature,
                                  lambda ids: chunks.put(text.push(ids)), seed=seed)
            except BaseException as error:  # handed to the consumer thread
                failure.append(error)
            finally:
                chunks.put(None)

        threading.Thread(target=work, daemon=True).start()
        while (chunk := chunks.get()) is not None:
            if chunk:
                yield chunk
        if failure:
            raise failure[0]
