"""weights.bin written while the graph is traced: parameters in place, folded constants appended,
the streamed checksum equal to the file's, and dead bytes refused."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from hydra_export.export.weights_writer import WeightsWriter
from hydra_runtime.manifest import sha256_of

ALIGN = 4096


def _parameters():
    torch.manual_seed(0)
    return [torch.randn(32, 30), torch.randn(30, 20).half(), torch.randn(3)]  # the last is too small to write ahead


def _model(parameters, folded: np.ndarray):
    """y = x @ w0 + sum(w1) + sum(b) + sum(folded): initializers backed by the parameters (as the
    exporter leaves them) and one numpy-backed constant (as folding leaves one)."""
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["xw"]),
             helper.make_node("Cast", ["w1"], ["w1f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["w1f"], ["s1"], keepdims=0),
             helper.make_node("ReduceSum", ["b"], ["s2"], keepdims=0),
             helper.make_node("ReduceSum", ["folded"], ["s3"], keepdims=0),
             helper.make_node("Sum", ["xw", "s1", "s2", "s3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 30])])
    arrays = {"w0": parameters[0].numpy(), "w1": parameters[1].numpy(), "b": parameters[2].numpy(), "folded": folded}
    graph.initializer.extend(onnx.numpy_helper.from_array(array, name) for name, array in arrays.items())
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    for name, tensor in zip(["w0", "w1", "b"], parameters):  # torch-backed, as the exporter leaves them
        model.graph.initializers[name].const_value = ir.tensor(tensor, name=name)
    return model


def _expected(parameters, folded, x):
    w0, w1, b = (p.float().numpy() for p in parameters)
    return x @ w0 + w1.sum() + b.sum() + folded.sum()


def test_parameters_in_place_constants_appended_and_the_digest_is_the_files(tmp_path):
    parameters = _parameters()
    folded = np.linspace(0, 1, 600, dtype=np.float32)
    writer = WeightsWriter(tmp_path / "weights.bin", parameters + [parameters[0]], ALIGN, min_bytes=1024).start()
    model = _model(parameters, folded)
    assert writer.place(model, "weights.bin", min_bytes=64)
    ir.save(model, str(tmp_path / "m.onnx"))
    digest = writer.hexdigest(tmp_path / "weights.bin")

    assert digest == sha256_of(tmp_path / "weights.bin")
    offsets = {init.name: {e.key: int(e.value) for e in init.external_data if e.key != "location"}
               for init in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph.initializer
               if init.external_data}
    # The two large parameters were written ahead, once each, in order; the folded constant appended
    # after them; the tiny parameter stays inside the graph.
    assert offsets == {"w0": {"offset": 0, "length": 32 * 30 * 4}, "w1": {"offset": ALIGN, "length": 30 * 20 * 2},
                       "folded": {"offset": 2 * ALIGN, "length": 600 * 4}}
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _expected(parameters, folded, x), rtol=1e-5, atol=1e-4)


def test_a_written_parameter_the_graph_does_not_read_is_refused(tmp_path):
    parameters = _parameters()
    unread = torch.randn(50, 50)
    writer = WeightsWriter(tmp_path / "weights.bin", parameters + [unread], ALIGN, min_bytes=1024).start()
    model = _model(parameters, np.ones(4, np.float32))
    before = [type(value.const_value) for value in model.graph.initializers.values()]
    assert not writer.place(model, "weights.bin", min_bytes=64)
    assert [type(value.const_value) for value in model.graph.initializers.values()] == before  # left as it was
    writer.rewritten()
    (tmp_path / "weights.bin").write_bytes(b"another writer's file")
    assert writer.hexdigest(tmp_path / "weights.bin") == sha256_of(tmp_path / "weights.bin")


def test_close_stops_the_thread_within_a_chunk_and_keeps_the_file_for_the_caller(tmp_path):
    table = torch.empty(1 << 26)  # 256 MiB: four of the writer's 64 MiB write calls
    writer = WeightsWriter(tmp_path / "weights.bin", [table], ALIGN, 1).start()
    writer.close()
    writer.close()
    assert not writer._thread.is_alive() and writer._file.closed
    assert writer.written < writer.planned_bytes  # stopped, not written to the end
    assert isinstance(writer._error, InterruptedError)
    assert (tmp_path / "weights.bin").stat().st_size == writer.written
    assert writer.hexdigest(tmp_path / "weights.bin") == sha256_of(tmp_path / "weights.bin")  # read back


def test_the_file_is_new(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        WeightsWriter(tmp_path / "weights.bin", _parameters(), ALIGN, 1)
    assert (tmp_path / "weights.bin").read_bytes() == b"not ours"


def test_an_engine_with_an_unread_parameter_is_written_by_the_fallback(llama, tmp_path):
    """export_graph: a parameter the engine never reads was written ahead; the file is then
    rewritten from the graph, with the same engine and checksum as without that parameter."""
    from conftest import random_heads
    from hydra_export.export.graph_specs import build_engine_spec
    from hydra_export.export.onnx_export import export_graph
    from hydra_runtime import TreeBuffers

    spec = build_engine_spec(llama, random_heads(llama, "hydra"), TreeBuffers.from_name("tree16"), 64, torch.float32)
    for name in ("plain", "unread"):
        if name == "unread":
            spec.module.register_parameter("unread", torch.nn.Parameter(torch.randn(128, 256), requires_grad=False))
        (tmp_path / name).mkdir()
        exported = export_graph(spec, tmp_path / name)
        assert exported.weights.hexdigest(tmp_path / name / "weights.bin") == sha256_of(tmp_path / name / "weights.bin")
    plain, unread = (onnx.load(str(tmp_path / name / "engine.onnx")) for name in ("plain", "unread"))
    assert {i.name: onnx.numpy_helper.to_array(i).tobytes() for i in unread.graph.initializer} == {
        i.name: onnx.numpy_helper.to_array(i).tobytes() for i in plain.graph.initializer}
    sizes = [(tmp_path / name / "weights.bin").stat().st_size for name in ("plain", "unread")]
    assert sizes[1] <= sizes[0]  # nothing of the unread parameter's 128 KiB


@pytest.mark.parametrize("finish", ["wait", "close"])
def test_gil_handed_over_quickly_while_the_thread_runs_then_restored(tmp_path, finish):
    """The tracing thread holds the GIL; the writer's ~370 calls for a 1.1B model each waited up
    to one switch interval for it. The interval is short only while the writer runs."""
    import sys

    from hydra_export.export.weights_writer import GIL_SWITCH_SECONDS

    before = sys.getswitchinterval()
    writer = WeightsWriter(tmp_path / "weights.bin", _parameters(), ALIGN, 1)
    assert sys.getswitchinterval() == before  # not before start()
    writer.start()
    assert sys.getswitchinterval() == pytest.approx(min(before, GIL_SWITCH_SECONDS))
    getattr(writer, finish)()
    assert sys.getswitchinterval() == pytest.approx(before)
    writer.close()
    assert sys.getswitchinterval() == pytest.approx(before)
