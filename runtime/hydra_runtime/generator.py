"""The runtime's front door: load an artifact directory and generate from it (no torch).

A Generator owns one engine and one KV cache, so it serves one request at a time: calls
from several threads are serialized by a lock (each waits for the one before it), and a
stream that is closed or dropped stops decoding at its next step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends.choice import open_backend
from .backends.decode_backend import DecodeBackend
from .chat_tokenizer import ChatTokenizer
from .decode_loop import DecodeStats, StopRule, decode
from .errors import GenerationInputError
from .manifest import Manifest
from .sampling import SamplingConfig, greedy_feeds
from .text_stream import TextStream
from .tree import TreeBuffers

MODES = ("hydra", "autoregressive")


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    stats: DecodeStats


class StreamClosed(Exception):
    """Raised inside a stream's decode loop once its consumer has gone (never reaches the user)."""


class Generator:
    def __init__(self, manifest: Manifest, tokenizer: ChatTokenizer, backend: DecodeBackend, tree: TreeBuffers):
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.backend = backend
        self.tree = tree  # the manifest's tree (the backend checked it is the engine's)
        self._lock = threading.Lock()  # one KV cache: one request at a time

    @classmethod
    def load(
        cls, artifact_dir: str | Path, backend: str = "auto", threads: int | None = None, verify_checksums: bool = True
    ) -> Generator:
        """``backend``: auto | cpu | cuda (ONNX Runtime) | tensorrt; auto picks the fastest this machine has."""
        artifact_dir = Path(artifact_dir)
        manifest = Manifest.read(artifact_dir, verify_checksums=verify_checksums)
        tree = manifest.tree_buffers()  # a malformed tree is refused before any engine loads
        tokenizer = ChatTokenizer.from_dir(artifact_dir)
        return cls(manifest, tokenizer, open_backend(artifact_dir, manifest, backend, threads), tree)

    def close(self) -> None:
        """Free the engine and its cache (device memory on a GPU)."""
        with self._lock:
            self.backend.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encode(self, prompt_or_messages) -> list[int]:
        return self.tokenizer.encode_prompt(prompt_or_messages)

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 256, mode: str = "hydra",
                     temperature: float = 0.0, on_tokens=lambda tokens: None, seed: int = 0,
                     sampling: SamplingConfig | None = None) -> tuple[list[int], DecodeStats]:
        """Greedy when temperature is 0 (lossless); otherwise speculative sampling, seeded by ``seed``
        (distributed as the base model's own sampling at that temperature)."""
        if mode not in MODES:
            raise GenerationInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        sampling = sampling or SamplingConfig(temperature=temperature)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise GenerationInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise GenerationInputError(f"seed must be a non-negative integer, got {seed!r}")
        limit = self.manifest.max_seq_len
        if not prompt_ids or len(prompt_ids) >= limit:
            raise GenerationInputError(
                f"the prompt has {len(prompt_ids)} tokens; this artifact accepts 1 to {limit - 1} "
                f"(its maximum sequence length is {limit}). Shorten the prompt or rebuild with a larger --max-seq-len"
            )
        vocab = self.manifest.base_model.vocab_size
        bad = [token for token in prompt_ids
               if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < vocab]
        if bad:
            raise GenerationInputError(f"prompt token ids must be integers in 0..{vocab - 1}; got {bad[:5]!r}")
        stop = StopRule(max_new_tokens, frozenset(self.manifest.eos_token_ids), limit, len(prompt_ids))
        rng = np.random.default_rng(seed)
        rows = self.tree.num_verified  # one uniform per verified row and call
        greedy = greedy_feeds(rows)  # built once: the same for every greedy call
        controls = (lambda: greedy) if sampling.greedy else (lambda: sampling.engine_feeds(rng.random(rows)))
        with self._lock:
            return decode(self.backend, list(prompt_ids), stop, self.tree, mode == "hydra", on_tokens, controls)

    def generate(self, prompt_or_messages, max_new_tokens: int = 256, mode: str = "hydra",
                 temperature: float = 0.0, seed: int = 0) -> GenerationOutput:
        ids, stats = self.generate_ids(self.encode(prompt_or_messages), max_new_tokens, mode, temperature, seed=seed)
        return GenerationOutput(self.tokenizer.decode(ids), ids, stats)

    def stream(self, prompt_or_messages, max_new_tokens: int = 256, mode: str = "hydra",
               temperature: float = 0.0, seed: int = 0) -> Iterator[str]:
        """Yields text as tokens are accepted (generation runs on a background thread).

        Closing the iterator (or dropping it) stops the decoding at its next step.
        """
        import queue

        chunks: queue.Queue = queue.Queue()
        text = TextStream(self.tokenizer.decode)
        prompt_ids = self.encode(prompt_or_messages)
        SamplingConfig(temperature=temperature)  # bad settings fail here, in the caller's thread
        failure: list[BaseException] = []
        closed = threading.Event()

        def on_tokens(ids):
            if closed.is_set():
                raise StreamClosed
            chunks.put(text.push(ids))

        def work():
            try:
                self.generate_ids(prompt_ids, max_new_tokens, mode, temperature, on_tokens, seed=seed)
                chunks.put(text.flush())
            except StreamClosed:
                pass
            except BaseException as error:  # handed to the consumer thread
                failure.append(error)
            finally:
                chunks.put(None)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (chunk := chunks.get()) is not None:
                if chunk:
                    yield chunk
        finally:
            closed.set()  # a consumer that stops early (close, break, garbage collection) stops the work
        if failure:
            raise failure[0]
