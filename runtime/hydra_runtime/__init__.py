"""hydra_runtime: the torch-free deploy side of hydra-export."""

from .errors import (
    ArtifactError,
    GenerationInputError,
    HeadsCheckpointError,
    HydraExportError,
    InvalidTreeError,
    UnsupportedModelError,
)
from .generator import GenerationOutput, Generator
from .tree import DepthPlan, TreeBuffers
from .tree_presets import TREE_PRESETS

__all__ = [
    "ArtifactError",
    "DepthPlan",
    "GenerationOutput",
    "Generator",
    "GenerationInputError",
    "HeadsCheckpointError",
    "HydraExportError",
    "InvalidTreeError",
    "TREE_PRESETS",
    "TreeBuffers",
    "UnsupportedModelError",
]
