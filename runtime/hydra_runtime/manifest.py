"""manifest.json: the contract between the build side and the runtime, as frozen dataclasses.

The build side writes a ``Manifest`` with ``write``; the runtime reads it with ``read``,
which refuses, saying which file and what to do: an unknown format version, a malformed
section, a path that leaves the artifact directory, a missing file, or a checksum that
does not match. An artifact is untrusted input: nothing here sizes memory; the backends
size their buffers from the engine itself and check it against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from .errors import ArtifactError
from .tree import TreeBuffers

FORMAT_VERSION = 4  # 4: speculative sampling (random_uniforms [V]); 3: the engine takes copy_tokens; 2: one engine graph; 1: prefill/step/decode graphs
MANIFEST_FILE = "manifest.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # ONNX's type name, lower-cased: float, float16, bfloat16, int64, bool
    shape: tuple[int | str, ...]  # symbolic dims are their names (see engine.py)


@dataclass(frozen=True)
class GraphEntry:
    file: str  # relative to the artifact directory
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(spec for spec in self.outputs if spec.name == name)


@dataclass(frozen=True)
class KvCache:
    num_layers: int  # base layers, plus Hydra++'s context layer
    kv_heads: int
    head_dim: int
    dtype: str  # numpy name: float32 | float16 | bfloat16
    layout: str = "[batch=1, sequence, kv_heads, head_dim]"


@dataclass(frozen=True)
class TreeInfo:
    name: str
    choices: tuple[tuple[int, ...], ...]
    num_nodes: int  # drafted nodes, root included
    depth: int  # drafted depth
    copy_nodes: int = 0  # the copy chain under the root


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int


@dataclass(frozen=True)
class TensorRTPlan:
    version: str
    plan: str  # the engine's plan file, relative to the artifact directory
    optimization_level: int
    build_seconds: float
    profile: dict  # input name -> [min, opt, max] shapes
    timing_cache: str
    reused_timing_cache: bool = False
    strongly_typed: bool = True


@dataclass(frozen=True)
class Manifest:
    target: str  # onnx | tensorrt
    dtype: str  # fp32 | fp16 | bf16
    max_seq_len: int
    base_model: BaseModelInfo
    heads: dict  # the heads' config (HeadsConfig.to_dict()) plus their "directory"
    tree: TreeInfo
    kv_cache: KvCache
    eos_token_ids: tuple[int, ...]
    engine: GraphEntry
    toolchain: dict
    files: dict = field(default_factory=dict)  # relative path -> sha256, every file but the manifest
    tensorrt: TensorRTPlan | None = None
    format_version: int = FORMAT_VERSION

    @property
    def tree_choices(self) -> list[list[int]]:
        return [list(path) for path in self.tree.choices]

    def tree_buffers(self) -> TreeBuffers:
        """The tree baked into the engine, validated (a malformed one is refused with InvalidTreeError)."""
        return TreeBuffers.from_choices(self.tree_choices, copy_nodes=self.tree.copy_nodes)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, artifact_dir: Path) -> None:
        (Path(artifact_dir) / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict, where: str = MANIFEST_FILE) -> Manifest:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} does not hold a JSON object; rebuild the artifact")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{where} has format version {version!r} but this runtime reads version {FORMAT_VERSION}; "
                "rebuild the artifact with a matching hydra-export (`hydra-export build`), or upgrade the runtime"
            )
        try:
            tensorrt = data.get("tensorrt")
            return cls(
                target=str(data["target"]),
                dtype=str(data["dtype"]),
                max_seq_len=_positive(data["max_seq_len"], "max_seq_len"),
                base_model=BaseModelInfo(**data["base_model"]),
                heads=dict(data["heads"]),
                tree=TreeInfo(name=str(data["tree"]["name"]),
                              choices=tuple(tuple(path) for path in data["tree"]["choices"]),
                              num_nodes=_positive(data["tree"]["num_nodes"], "tree.num_nodes"),
                              depth=int(data["tree"]["depth"]),
                              copy_nodes=int(data["tree"]["copy_nodes"])),
                kv_cache=KvCache(**data["kv_cache"]),
                eos_token_ids=tuple(int(token) for token in data["eos_token_ids"]),
                engine=_graph_entry(data["engine"]),
                toolchain=dict(data["toolchain"]),
                files={str(name): str(digest) for name, digest in data["files"].items()},
                tensorrt=TensorRTPlan(**tensorrt) if tensorrt else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ArtifactError(f"{where} is malformed ({type(error).__name__}: {error}); rebuild the artifact "
                                "with `hydra-export build`") from None

    @classmethod
    def read(cls, artifact_dir: Path, verify_checksums: bool = True) -> Manifest:
        artifact_dir = Path(artifact_dir)
        path = artifact_dir / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(
                f"{artifact_dir} is not an artifact directory: {MANIFEST_FILE} is missing. "
                "Build one with `hydra-export build -o DIR`"
            )
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArtifactError(f"{path} is not valid JSON ({error}); rebuild the artifact") from None
        manifest = cls.from_dict(data, str(path))
        manifest.check_files(artifact_dir, verify_checksums)
        return manifest

    def referenced_files(self) -> list[str]:
        """Every file the manifest names: the engine, the TensorRT plan, and the checksummed files."""
        return [self.engine.file, *([self.tensorrt.plan] if self.tensorrt else []), *self.files]

    def check_files(self, artifact_dir: Path, verify_checksums: bool) -> None:
        for name in self.referenced_files():
            inside_artifact(artifact_dir, name)
        for name in (self.engine.file, *([self.tensorrt.plan] if self.tensorrt else [])):
            if name not in self.files:
                raise ArtifactError(f"{MANIFEST_FILE} names {name} but lists no checksum for it; rebuild the artifact")
        for name, expected in self.files.items():
            file = artifact_dir / name
            if not file.is_file():
                raise ArtifactError(f"artifact file {file} is missing; rebuild the artifact or restore the file")
            if verify_checksums and sha256_of(file) != expected:
                raise ArtifactError(
                    f"artifact file {file} does not match its sha256 in {MANIFEST_FILE} (corrupted or edited); "
                    "rebuild the artifact or restore the file"
                )


def inside_artifact(artifact_dir: Path, name: str) -> Path:
    """``artifact_dir / name``, refused unless ``name`` is a plain relative path that stays inside."""
    relative = PurePosixPath(name)
    if (not name or relative.is_absolute() or "\\" in name or any(part in ("..", "") for part in relative.parts)
            or name.startswith("~")):
        raise ArtifactError(f"{MANIFEST_FILE} names the file {name!r}, which is not a path inside the artifact; "
                            "the artifact is corrupted or hostile: rebuild it")
    path = Path(artifact_dir) / relative
    root = os.path.realpath(artifact_dir)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:  # a symlink that leads out
        raise ArtifactError(f"artifact file {name!r} resolves outside {artifact_dir}; rebuild the artifact")
    return path


def _positive(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return value


def _graph_entry(data: dict) -> GraphEntry:
    def specs(values):
        return tuple(TensorSpec(name=str(v["name"]), dtype=str(v["dtype"]), shape=tuple(v["shape"])) for v in values)

    return GraphEntry(file=str(data["file"]), inputs=specs(data["inputs"]), outputs=specs(data["outputs"]))
