"""hydra_runtime: the torch-free deploy side of hydra-export."""

from .errors import (
    ArtifactError,
    GenerationInputError,
    HeadsCheckpointError,
    HydraExportError,
    InvalidTreeError,
    UnsupportedModelError,
)
from .tree import DepthPlan, TreeBuffers
from .tree_presets import TREE_PRESETS

__all__ = [
    "ArtifactError",
    "DepthPlan",
    "GenerationInputError",
    "HeadsCheckpointError",
    "HydraExportError",
    "InvalidTreeError",
    "TREE_PRESETS",
    "TreeBuffers",
    "UnsupportedModelError",
]
