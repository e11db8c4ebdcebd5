"""One graph output compared between two implementations (max errors, or exact for integers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OutputComparison:
    graph: str
    output: str
    max_abs_error: float
    max_rel_error: float
    exact: bool | None  # integer outputs: identical or not; None for float outputs

    def within(self, tolerance: float) -> bool:
        return self.exact if self.exact is not None else self.max_abs_error <= tolerance


def compare_outputs(graph: str, ours: dict, theirs: dict) -> list[OutputComparison]:
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
