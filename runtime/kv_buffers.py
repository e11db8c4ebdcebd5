"""Preallocated KV cache, one buffer per layer and part, laid out [1, max_seq, kv_heads, head_dim].

Sequence-major, so the cached prefix ``[:, :length]`` is a contiguous view handed to the
engine without copying; each step writes only the accepted rows.
"""

from __future__ import annotations

import numpy as np

from .engine import past_key_name, present_name


class KVBuffers:
    def __init__(self, num_layers: int, max_seq_len: int, kv_heads: int, head_dim: int, dtype: np.dtype):
        shape = (1, max_seq_len, kv_heads, head_dim)
        self.buffers = {
            (layer, part): np.zeros(shape, dtype=dtype) for layer in range(num_layers) for part in ("key", "value")
        }
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def feeds(self, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The cached prefix for every past_key_values input the engine declares."""
        feeds = {}
        for (layer, part), buffer in self.buffers.items():
            name = past_key_name(layer, part)
            if name in input_names:
                feeds[name] = buffer[:, : self.length]
        return feeds

    def append(self, outputs: dict[str, np.ndarray], rows: int) -> None:
        """Write the first ``rows`` rows of every present.* output after the cached prefix."""
        for (layer, part), buffer in self.buffers.items():
            present = outputs.get(present_name(layer, part))
            if present is not None:
                buffer[:, self.length : self.length + rows] = present[:, :rows]
        self.length += rows
