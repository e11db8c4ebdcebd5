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
initializer's mapping for the session's life); the backend drops them when it closes. Linux
only (``/proc/self/smaps``); elsewhere it finds nothing and does nothing.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MADV_DONTNEED = 4
MIN_MAPPING_BYTES = 1 << 20  # smaller mappings (norm weights, small constants) are not worth a syscall


class MappedPages:
    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges  # (address, bytes) of each mapping to release
        self._madvise = _libc_madvise() if ranges else None
        if self._madvise is None:
            self.ranges = []

    @classmethod
    def of_files(cls, files: list[Path]) -> MappedPages:
        """The mappings this process holds of ``files`` (>= MIN_MAPPING_BYTES, no written page)."""
        try:
            identities = {(stat.st_dev, stat.st_ino) for stat in (os.stat(path) for path in files)}
            ranges = [(start, end - start) for start, end, dev, inode, copied in _mappings()
                      if (dev, inode) in identities and not copied and end - start >= MIN_MAPPING_BYTES]
        except OSError:  # no /proc (not Linux), or a file gone: nothing to release
            return cls([])
        return cls(ranges)

    def release(self) -> None:
        for address, length in self.ranges:
            self._madvise(address, length, MADV_DONTNEED)


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
    """(start, end, st_dev, st_ino, copied) per mapping in /proc/self/smaps; copied: it holds
    anonymous pages (private copies of pages written to)."""
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
                mapping = [start, end, os.makedev(major, minor), int(fields[4]), False]
            elif mapping is not None and fields[0] == "Anonymous:" and fields[1] != "0":
                mapping[4] = True
    if mapping is not None:
        yield mapping
