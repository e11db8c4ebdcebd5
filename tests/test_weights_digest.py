"""The weights file's checksum hashed while onnx_ir writes it equals the file's sha256."""

import numpy as np
import onnx_ir as ir
import torch
from onnx import TensorProto, helper, numpy_helper

from hydra_export.export.weights_digest import WeightsDigest
from hydra_runtime.manifest import sha256_of


def _model():
    """Initializers of odd sizes and dtypes (torch-backed like the exporter's, and numpy-backed
    like folded constants), so page alignment leaves gaps of zeros between them."""
    arrays = [np.arange(1000, dtype=np.float32), np.ones(7, dtype=np.float16), np.arange(5000, dtype=np.int64)]
    inits = [numpy_helper.from_array(array, f"w{i}") for i, array in enumerate(arrays)]
    graph = helper.make_graph([helper.make_node("Identity", ["w0"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])], inits)
    model = ir.serde.deserialize_model(helper.make_model(graph))
    model.graph.initializers["w0"].const_value = ir.tensor(torch.linspace(0, 1, 1000))  # a TorchTensor
    return model


def test_streamed_digest_is_the_files_sha256(tmp_path):
    digest = WeightsDigest()
    ir.save(_model(), str(tmp_path / "m.onnx"), external_data="weights.bin", size_threshold_bytes=0,
            alignment=4096, align_threshold=0, callback=lambda tensor, info: digest.announce(tensor, info.offset))
    path = tmp_path / "weights.bin"
    assert path.stat().st_size > 2 * 4096  # the alignment left gaps
    assert digest.hexdigest(path) == sha256_of(path)


def test_a_surprise_falls_back_to_reading_the_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc" * 5000)
    digest = WeightsDigest()
    digest.announce(ir.tensor(np.ones(10, dtype=np.float32)), 4096)
    digest.announce(ir.tensor(np.ones(10, dtype=np.float32)), 0)  # out of file order
    assert digest.hexdigest(path) == sha256_of(path)


def test_close_without_a_digest_stops_the_thread():
    digest = WeightsDigest()
    digest.close()
    digest.close()
    assert not digest._thread.is_alive()
