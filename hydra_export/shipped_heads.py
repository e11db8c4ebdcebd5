"""Heads trained by this project's recipes and shipped inside the package."""

from __future__ import annotations

from pathlib import Path

SHIPPED_ROOT = Path(__file__).parent / "shipped_heads"
PREFERRED_KINDS = ("hydra++", "hydra", "medusa")  # best first


def shipped_heads_dir(model_name: str, kind: str | None = None) -> Path | None:
    """The shipped heads for a named model (the best kind unless ``kind`` is given), if any."""
    for candidate in [kind] if kind else PREFERRED_KINDS:
        directory = SHIPPED_ROOT / model_name / candidate
        if (directory / "heads_config.json").is_file():
            return directory
    return None
