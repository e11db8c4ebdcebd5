"""The project's typed errors (defined runtime-side so the deploy half can raise them too)."""

from hydra_runtime.errors import (  # noqa: F401  (re-exported)
    ArtifactError,
    GenerationInputError,
    HeadsCheckpointError,
    HydraExportError,
    InvalidTreeError,
    UnsupportedModelError,
)
