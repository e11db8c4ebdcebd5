"""What a decode step costs by the number of rows it verifies, in one-token steps.

On a GPU a step of 20 rows costs about what a one-token step does; on a CPU every row is
compute, and not linearly: on 2 Zen 5 cores (ONNX Runtime's fp32 GEMMs) the default artifact's
step costs 1.3-1.4x a one-token step at 4 rows, 1.5-1.7x at 10 and 1.8-2.1x at 13, then little
more until 16 (two runs, BENCHMARKS.md N). ``StepCosts`` holds such a measured curve (``hydra-export step-costs``
writes it: step_cost_probe) or a straight line (``linear``), and is what the decode simulator's modelled speedup
and ``tree-search`` divide by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import HydraExportError


@dataclass(frozen=True)
class StepCosts:
    """measured[r - 1]: a step verifying r rows, in one-token steps (measured[0] = 1); past the
    measured rows, each further row adds ``row_cost``."""

    measured: tuple[float, ...] = (1.0,)
    row_cost: float = 0.0

    @classmethod
    def linear(cls, row_cost: float) -> StepCosts:
        """Every row past the first costs ``row_cost`` of a one-token step."""
        return cls((1.0,), row_cost)

    @classmethod
    def from_file(cls, path: Path) -> StepCosts:
        """The ``step_costs`` and ``row_cost`` of ``hydra-export step-costs``'s JSON output."""
        try:
            data = json.loads(Path(path).read_text())
            measured = tuple(float(cost) for cost in data["step_costs"])
            row_cost = float(data["row_cost"])
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise HydraExportError(f"{path} is not step costs written by `hydra-export step-costs` ({error!r}); "
                                    "run `hydra-export step-costs ARTIFACT -o FILE` to measure them") from None
        if not measured or measured[0] != 1.0 or not all(cost >= 1.0 for cost in measured) or not row_cost >= 0:
            raise HydraExportError(f"{path}: step costs must start at 1.0 (a one-row step), never fall below it, "
                                    "and the row cost must be >= 0; measure them again with `hydra-export step-costs`")
        return cls(measured, row_cost)

    def of(self, rows: int) -> float:
        """A step verifying ``rows`` (>= 1) rows, in one-token steps."""
        if rows <= len(self.measured):
            return self.measured[rows - 1]
        return self.measured[-1] + self.row_cost * (rows - len(self.measured))

    def as_dict(self) -> dict:
        return {"measured": list(self.measured), "row_cost": self.row_cost}

    @property
    def free(self) -> bool:
        """Rows cost nothing (a GPU): trees are then ranked by accepted length alone."""
        return self.row_cost == 0 and all(cost == 1.0 for cost in self.measured)
