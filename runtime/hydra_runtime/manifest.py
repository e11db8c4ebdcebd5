"""manifest.json: the contract between the build side and the runtime.

The runtime refuses an artifact whose format version it does not know, whose files are
missing, or whose checksums do not match, saying which file and what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphEntry:
    file: str
    inputs: list[dict]  # {"name", "dtype", "shape"}; symbolic dims are strings
    outputs: list[dict]


@dataclass(frozen=True)
class Manifest:
    data: dict

    @property
    def graphs(self) -> dict[str, GraphEntry]:
        return {name: GraphEntry(**entry) for name, entry in self.data["graphs"].items()}

    @property
    def kv(self) -> dict:
        return self.data["kv_cache"]

    @property
    def tree_choices(self) -> list[list[int]]:
        return self.data["tree"]["choices"]

    @property
    def max_seq_len(self) -> int:
        return int(self.data["max_seq_len"])

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.data["tokenizer"]["eos_token_ids"])

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
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{path} is not valid JSON ({error}); rebuild the artifact") from None
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format version {version!r} but this runtime reads version {FORMAT_VERSION}; "
                "rebuild the artifact with a matching hydra-export, or upgrade the runtime"
            )
        for key in ("graphs", "files", "kv_cache", "tree", "tokenizer", "max_seq_len"):
            if key not in data:
                raise ArtifactError(f"{path} lacks the {key!r} section; rebuild the artifact")
        manifest = cls(data)
        manifest.check_files(artifact_dir, verify_checksums)
        return manifest

    def check_files(self, artifact_dir: Path, verify_checksums: bool) -> None:
        for name, expected in self.data["files"].items():
            file = artifact_dir / name
            if not file.is_file():
                raise ArtifactError(f"artifact file {file} is missing; rebuild the artifact or restore the file")
            if verify_checksums and sha256_of(file) != expected:
                raise ArtifactError(
                    f"artifact file {file} does not match its sha256 in {MANIFEST_FILE} (corrupted or edited); "
                    "rebuild the artifact or restore the file"
                )
