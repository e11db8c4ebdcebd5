"""Outputs written whole or not at all, and never a replace of what is not ours.

A build writes into a staging directory beside its target (``.NAME.partial-XXXX``, marked
as ours by a marker file) and swaps it into place only when complete. ``--force`` replaces
only a directory that holds one of our artifacts, and does so by two renames, so an
interrupt leaves the old artifact or the new one in place (the old one under
``.NAME.old-XXXX`` at worst), never neither. The next build of the same target removes
stale staging and retired directories, but only those carrying our marker.

Output files (reports, plots, tree files) are checked before the work that fills them (a
benchmark takes minutes: a typo in ``--json``'s directory must not lose its results) and
written to a temporary file beside the target, renamed over it when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import HydraExportError

MARKER = ".hydra-export-staging"  # present only in directories this project created


def stale_siblings(target: Path) -> list[Path]:
    """Our leftover staging or retired directories of ``target`` (from an interrupted build)."""
    candidates = [*target.parent.glob(f".{target.name}.partial-*"), *target.parent.glob(f".{target.name}.old-*")]
    return [path for path in candidates if path.is_dir() and (path / MARKER).is_file()]


def new_staging(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_siblings(target):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    (staging / MARKER).touch()
    return staging


def check_replaceable(target: Path, force: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse, before any work, to write over something that is not ours (or anything without force)."""
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise HydraExportError(f"{target} already exists; pass --force to replace it, or choose another -o")
    if target.is_symlink() or not target.is_dir() or not is_ours(target):
        raise HydraExportError(
            f"{target} exists and is not {what}; --force replaces only {what}s, so nothing was changed. "
            "Choose another -o (or move that directory away yourself)"
        )


def publish(staging: Path, target: Path) -> None:
    """Move the complete ``staging`` directory to ``target``, retiring an existing ``target``."""
    retired = None
    if target.exists():
        retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        (retired / MARKER).touch()
        target.rename(retired / target.name)  # first rename: the old artifact is kept, set aside
    staging.rename(target)  # second rename: the new artifact is in place
    (target / MARKER).unlink()
    if retired is not None:
        shutil.rmtree(retired)


def discard(staging: Path) -> None:
    if staging.exists() and (staging / MARKER).exists():
        shutil.rmtree(staging, ignore_errors=True)


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, a file output that could not be written: its directory is missing,
    or the path is a directory."""
    if path.is_dir():
        raise HydraExportError(f"{option} {path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise HydraExportError(f"{option} {path}: the directory {path.parent} does not exist; create it first "
                               "or choose another path")


def write_output_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` a file beside ``path`` (same suffix, so writers that go by it still do),
    then rename it over ``path``: a reader never sees half a file, an error leaves ``path`` as it was.
    The temporary name is fixed, so what a killed process left is overwritten by the next write."""
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)  # safetensors makes 0600 files; outputs are shared as usual
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
