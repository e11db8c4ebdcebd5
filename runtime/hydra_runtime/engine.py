"""What the decode loop needs from an engine: named numpy arrays in, named numpy arrays out."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
PAST_SEQUENCE = "past_sequence"  # the symbolic dim (dim 1) of every past_key_values.* input


def past_key_name(layer: int, part: str) -> str:
    return f"{PAST_PREFIX}{layer}.{part}"


def present_name(layer: int, part: str) -> str:
    return f"{PRESENT_PREFIX}{layer}.{part}"
