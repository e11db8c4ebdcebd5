"""Give back the pages of the artifact's weight file that a decode step maps in.

ONNX Runtime on CPU maps an engine's external weights (``weights.bin``) into memory and packs
the matrices into its own buffers; what it still reads from the mapping at run time are
lookup tables, above all the token embedding (a Gather reads one row per token id). A row is
a few KB, but a read fault maps the whole page-cache folio around it, up to ~1 MB of the file
on a recent Linux kernel, and those pages stay in the process's resident set: on the default
135M artifact ~15 MB at the prefill and ~0.1 MB more per generated token (37 MB after 214
tokens), though the process reads a few hundred rows.

``MappedPages.release()`` (after each step) unmaps them with ``madvise(MADV_DONTNEED)``: the
file's pages stay in the page cache and the next read maps them again (a minor fault, no
I/O). A private mapping's page that was written to has become an anonymous copy, which this
would discard: a mapping is only taken while it holds no such page (smaps' ``Anonymous: 0``)
when the backend opens it, and nothing writes to an engine's initializers after that. The
ranges are taken once the session exists and stay valid while it does (ONNX Runtime keeps an
initializer's mapping for the session's life); the backend drops them when it closes.

Released after a step, the folios are still mapped during it: the default command's 36-token
prefill mapped 25 MB for 36 rows, the process's peak. So ``reread_in_small_pages()`` (once, when
the session is ready) drops the mapped ranges from the page cache (``POSIX_FADV_DONTNEED``; a
page another process maps stays) and reads them back through a descriptor advised
``POSIX_FADV_RANDOM``: without readahead the kernel caches them in base pages, and a row maps
a page or two (plus the kernel's fault-around, <= 64 KB). It costs one read of the tables
(113 MB: ~0.1 s on this machine kind; BENCHMARKS.md J has the numbers).

Linux only (``/proc/self/smaps``); elsewhere it finds nothing and does nothing.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import NamedTuple

MADV_DONTNEED = 4
REREAD_CHUNK_BYTES = 1 << 20
MIN_MAPPING_BYTES = 1 << 20  # smaller mappings (norm weights, small constants) are not worth a syscall


class Mapping(NamedTuple):
    address: int
    length: int  # bytes
    path: Path  # the file it maps
    offset: int  # where in the file it starts


class MappedPages:
    def __init__(self, ranges: list[Mapping]):
        self.ranges = ranges
        self._madvise = _libc_madvise() if ranges else None
        if self._madvise is None:
            self.ranges = []

    @classmethod
    def of_files(cls, files: list[Path]) -> MappedPages:
        """The mappings this process holds of ``files`` (>= MIN_MAPPING_BYTES, no written page)."""
        try:
            paths = {}  # (st_dev, st_ino) -> the file
            for path in files:
                stat = os.stat(path)
                paths[stat.st_dev, stat.st_ino] = Path(path)
            ranges = [Mapping(start, end - start, paths[dev, inode], offset)
                      for start, end, offset, dev, inode, copied in _mappings()
                      if (dev, inode) in paths and not copied and end - start >= MIN_MAPPING_BYTES]
        except OSError:  # no /proc (not Linux), or a file gone: nothing to release
            return cls([])
        return cls(ranges)

    def release(self) -> None:
        for mapping in self.ranges:
            self._madvise(mapping.address, mapping.length, MADV_DONTNEED)

    def reread_in_small_pages(self) -> None:
        """Hold the mapped ranges in the page cache as base pages (see the module's docstring)."""
        if not self.ranges or not hasattr(os, "posix_fadvise"):
            return
        self.release()  # a page this process maps cannot be dropped
        for path in {mapping.path for mapping in self.ranges}:
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone or unreadable now: the mapping still reads, in large folios
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
                for mapping in (mapping for mapping in self.ranges if mapping.path == path):
                    os.posix_fadvise(descriptor, mapping.offset, mapping.length, os.POSIX_FADV_DONTNEED)
                    _read_range(descriptor, mapping.offset, mapping.length)
            except OSError:
                pass  # advice only: the pages read as before
            finally:
                os.close(descriptor)


def _read_range(descriptor: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        read = len(os.pread(descriptor, min(REREAD_CHUNK_BYTES, end - offset), offset))
        if read == 0:
            return
        offset += read


def _libc_madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _mappings():
    """(start, end, file offset, st_dev, st_ino, copied) per mapping in /proc/self/smaps; copied:
    it holds anonymous pages (private copies of pages written to)."""
    mapping = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                if mapping is not None:
                    yield mapping
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                major, minor = (int(part, 16) for part in fields[3].split(":"))
                mapping = [start, end, int(fields[2], 16), os.makedev(major, minor), int(fields[4]), False]
            elif mapping is not None and fields[0] == "Anonymous:" and fields[1] != "0":
                mapping[5] = True
    if mapping is not None:
        yield mapping
