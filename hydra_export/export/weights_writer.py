"""weights.bin written on the other core while the engine is traced, hashed as it is written.

The engine's large initializers are the traced module's own parameters (the exporter
references them, it does not copy them), so their bytes can reach the weights file before
the graph exists. A thread writes every contiguous parameter of at least ``min_bytes`` at
aligned offsets, in module order, and hashes what it writes; the trace holds the GIL, the
thread mostly waits in ``write`` and ``sha256`` (both release it). Once the graph is folded,
each initializer whose tensor is a written parameter becomes a reference to those bytes and
the others (folded constants) are appended after them.

Writing a 1.1B model's 2.2 GB after the trace took 4.9 s on this machine kind (the page cache
takes ~450 MB/s) and hashing it 2.1 s more; both now overlap the ~20 s trace.

Between its calls the thread needs the GIL for a moment, and the tracing thread gives it up only
every switch interval (5 ms by default): a 1.1B model's ~370 write and hash calls waited ~2 s for it,
which made the writer, not the trace, the build's longest path. While the thread runs, the
interval is 0.5 ms (GIL_SWITCH_SECONDS).

A written parameter that the folded graph no longer reads would leave dead bytes in the file:
``place`` then reports False and the caller rewrites the file from the graph (slow, same result).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path

import onnx_ir as ir
import torch

from hydra_runtime.manifest import sha256_of

_ZEROS = bytes(1 << 20)
_CHUNK = 64 << 20  # bytes per write call: a stop request is seen within one chunk
GIL_SWITCH_SECONDS = 0.0005  # sys.setswitchinterval while the thread runs (module docstring)


def _key(tensor: torch.Tensor) -> tuple:
    """Equal keys: the same bytes (contiguous tensors at the same address, same dtype and shape)."""
    return tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().reshape(-1).view(torch.uint8).numpy())


class WeightsWriter:
    """Writes ``tensors`` to ``path`` (a new file) on a thread once started; see the module docstring."""

    def __init__(self, path: Path, tensors, alignment: int, min_bytes: int):
        self.path = Path(path)
        self._alignment = alignment
        self._planned: dict[tuple, tuple[int, torch.Tensor]] = {}  # key -> (offset, tensor), in file order
        end = 0
        for tensor in tensors:
            nbytes = tensor.numel() * tensor.element_size()
            if tensor.device.type != "cpu" or not tensor.is_contiguous() or nbytes < min_bytes:
                continue
            if _key(tensor) not in self._planned:
                end = self._aligned(end)
                self._planned[_key(tensor)] = (end, tensor)
                end += nbytes
        self.planned_bytes = end
        self.written = 0  # bytes in the file so far, padding included
        self._digest = hashlib.sha256()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._rewritten = False  # the caller replaced the file: the streamed digest is not its
        self._file = open(self.path, "xb")  # noqa: SIM115 - closed by close()
        self._thread = threading.Thread(target=self._write_planned, name="weights-writer", daemon=True)
        self._switch_interval: float | None = None  # the process's own, while the thread runs

    def start(self) -> WeightsWriter:
        """Start writing (a separate step, so the caller can fork before this process has threads)."""
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_SECONDS))
        self._thread.start()
        return self

    def _restore_switch_interval(self) -> None:
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def _aligned(self, offset: int) -> int:
        return -(-offset // self._alignment) * self._alignment

    def _write_planned(self) -> None:
        try:
            for offset, tensor in self._planned.values():
                self._put(_bytes_of(tensor), offset)
        except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread by wait()
            self._error = error

    def _put(self, data: memoryview, offset: int) -> None:
        """Pad with zeros up to ``offset``, then write and hash ``data``."""
        while self.written < offset:
            self._write(memoryview(_ZEROS)[: min(offset - self.written, len(_ZEROS))])
        for start in range(0, data.nbytes, _CHUNK):
            if self._stop.is_set():
                raise InterruptedError("weights writer stopped")
            self._write(data[start:start + _CHUNK])

    def _write(self, chunk: memoryview) -> None:
        self._file.write(chunk)
        self._digest.update(chunk)
        self.written += chunk.nbytes

    def wait(self, progress=None) -> None:
        """Until every planned tensor is written; ``progress(done, total)`` in MiB meanwhile
        (``done == total`` only once, at the end)."""
        total = self.planned_bytes >> 20
        while self._thread.is_alive():
            if progress is not None and (self.written >> 20) < total:
                progress(self.written >> 20, total)
            self._thread.join(timeout=0.1)
        self._restore_switch_interval()
        if self._error is not None:
            raise self._error
        if progress is not None:
            progress(total, total)

    def place(self, model: ir.Model, location: str, min_bytes: int) -> bool:
        """Point ``model``'s initializers of at least ``min_bytes`` at the weights file: the written
        parameters where they are, the rest appended. False (nothing changed) when some written
        parameter is not read by the graph: the caller then rewrites the file."""
        self.wait()
        placed: dict[str, int] = {}  # initializer name -> offset of a written parameter
        appended = []
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.nbytes < min_bytes:
                continue
            raw = getattr(tensor, "raw", None)
            hit = self._planned.get(_key(raw)) if isinstance(raw, torch.Tensor) and raw.is_contiguous() else None
            if hit is not None:
                placed[value.name] = hit[0]
            else:
                appended.append(value)
        if set(placed.values()) != {offset for offset, _ in self._planned.values()}:
            return False
        for value in model.graph.initializers.values():
            if value.name in placed:
                value.const_value = self._reference(value.const_value, location, placed[value.name])
        for value in appended:
            offset = self._aligned(self.written)
            self._put(memoryview(value.const_value.tobytes()), offset)
            value.const_value = self._reference(value.const_value, location, offset)
        self._file.flush()
        return True

    def _reference(self, tensor, location: str, offset: int) -> ir.ExternalTensor:
        return ir.ExternalTensor(location, offset, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                 name=tensor.name, base_dir=str(self.path.parent))

    def rewritten(self) -> None:
        """The file at ``path`` was replaced by another writer: hexdigest reads it back."""
        self._rewritten = True

    def close(self) -> None:
        """Stop the thread and close the file (idempotent; the file stays for the caller)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._restore_switch_interval()
        self._file.close()

    def hexdigest(self, path: Path) -> str:
        """The sha256 of the finished file at ``path`` (read back only if the file was rewritten)."""
        self.close()
        if not self._rewritten and self._error is None and os.path.getsize(path) == self.written:
            return self._digest.hexdigest()
        return sha256_of(path)

