"""MappedPages: the weight file's pages a step maps in are given back, and only clean ones."""

import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from hydra_runtime.backends.mapped_pages import MIN_MAPPING_BYTES, MappedPages

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")


def resident_kib(address: int) -> int:
    """Rss of the mapping that starts at ``address`` (KiB)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                inside = int(fields[0].split("-")[0], 16) == address
            elif inside and fields[0] == "Rss:":
                return int(fields[1])
    raise AssertionError("mapping not found")


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "weights.bin"
    values = np.arange(MIN_MAPPING_BYTES, dtype=np.float32)  # 4 MiB
    values.tofile(path)
    return path, values


@pytest.mark.parametrize("access", [mmap.ACCESS_READ, mmap.ACCESS_COPY])  # shared read-only, private writable
def test_release_unmaps_read_pages_and_the_data_reads_back(weights_file, access):
    path, values = weights_file
    with open(path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=access)
    view = np.frombuffer(mapping, dtype=np.float32)
    address = view.ctypes.data
    assert view[::1024].sum() == values[::1024].sum()  # touch a row per page
    assert resident_kib(address) >= values.nbytes // 1024

    pages = MappedPages.of_files([path])
    assert [mapping.address for mapping in pages.ranges] == [address]
    assert [(mapping.path, mapping.offset) for mapping in pages.ranges] == [(path, 0)]
    pages.release()
    assert resident_kib(address) == 0
    np.testing.assert_array_equal(view, values)  # read again from the page cache
    del view
    mapping.close()


def test_reread_in_small_pages_makes_a_lookup_map_a_few_pages(weights_file):
    """A row read through the mapping maps at most the kernel's fault-around (64 KB) once the file
    is cached in base pages. Written in one write and synced, the file sits in the page cache in
    large folios where the kernel has them (this machine kind: one touch maps 2 MB without this)."""
    path, values = weights_file
    with open(path, "r+b") as file:
        os.fsync(file.fileno())  # clean pages: only those can be dropped and read back
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapping, dtype=np.float32)
    MappedPages.of_files([path]).reread_in_small_pages()
    middle = len(values) // 2 + 7
    assert view[middle] == values[middle]
    assert resident_kib(view.ctypes.data) <= 64
    np.testing.assert_array_equal(view, values)
    del view
    mapping.close()


def test_a_private_mapping_with_a_written_page_is_left_alone(weights_file):
    path, _ = weights_file
    with open(path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    view = np.frombuffer(mapping, dtype=np.float32)
    view[0] = -1.0  # a private copy of that page: releasing it would lose the write
    assert MappedPages.of_files([path]).ranges == []
    assert view[0] == -1.0
    del view
    mapping.close()


def test_small_mappings_and_other_files_are_not_taken(tmp_path, weights_file):
    path, _ = weights_file
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(64 << 10))
    with open(small, "rb") as file, open(path, "rb") as other:
        small_mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        big_mapping = mmap.mmap(other.fileno(), 0, access=mmap.ACCESS_READ)
    assert MappedPages.of_files([small]).ranges == []
    assert MappedPages.of_files([tmp_path / "missing.bin"]).ranges == []
    small_mapping.close()
    big_mapping.close()


def test_onnxruntime_maps_a_large_table_and_its_rows_are_given_back(tmp_path):
    """What the ONNX Runtime backend relies on: ORT maps a page-aligned external table rather than
    copying it, a Gather makes pages of it resident, and releasing them leaves results unchanged."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rows, width = 4096, 256  # 4 MiB of float32
    table = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    table.tofile(tmp_path / "weights.bin")
    init = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, width],
                       data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(table.nbytes))):
        init.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["rows"])], "lookup",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T"])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["T", width])], [init])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "engine.onnx"))
    session = ort.InferenceSession(str(tmp_path / "engine.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([7, 4000, 1234, 7])

    pages = MappedPages.of_files([tmp_path / "weights.bin"])
    assert len(pages.ranges) == 1
    address = pages.ranges[0][0]
    first = session.run(None, {"ids": ids})[0]
    assert resident_kib(address) > 0
    pages.release()
    assert resident_kib(address) == 0
    np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], table[ids])
    np.testing.assert_array_equal(first, table[ids])
