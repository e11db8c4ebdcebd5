"""Typed errors shared by the build side and the runtime.

Every message says what was wrong, where, and what to do about it; the CLI prints
them without a traceback.
"""


class HydraExportError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidTreeError(HydraExportError):
    """A speculation tree (preset name or list of choices) is malformed."""


class UnsupportedModelError(HydraExportError):
    """The base model's architecture or source is not supported."""


class HeadsCheckpointError(HydraExportError):
    """A draft-heads checkpoint cannot be loaded (missing, unmapped or mis-shaped tensors)."""


class ArtifactError(HydraExportError):
    """An artifact directory is missing files, corrupted, or of an unknown format."""


class GenerationInputError(HydraExportError):
    """A generation request cannot be served (prompt too long, bad parameters)."""
