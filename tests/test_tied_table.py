"""A tied embedding table read through views of the weights file (tied_table): same results, same
bytes on disk, the Gathers and the LM head reading separate names."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hydra_export.base_model import load_base_model
from hydra_export.export import tied_table
from hydra_export.export.tied_table import GATHER_VIEW_SUFFIX, share_tied_table
from hydra_runtime.generator import Generator

VOCAB, HIDDEN = 64, 16  # rows of 64 bytes: 64 rows per page


def _engine(tmp_path, table_dtype=np.float32, constant_gather=True, tied=True):
    """ids [T] -> embedding [T, H]; hidden [m, H] -> logits [m, V]; optionally rows [3, H] of the
    table at constant indices (the draft vocabulary's pattern). The table lives in weights.bin."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((VOCAB, HIDDEN)).astype(table_dtype)
    head = table if tied else rng.standard_normal((VOCAB, HIDDEN)).astype(table_dtype)
    blob = table.tobytes() + (b"" if tied else head.tobytes())
    (tmp_path / "weights.bin").write_bytes(blob)
    elem = TensorProto.FLOAT if table_dtype == np.float32 else TensorProto.FLOAT16

    def external(name, offset):
        init = TensorProto(name=name, data_type=elem, dims=[VOCAB, HIDDEN], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(table.nbytes))):
            init.external_data.add(key=key, value=value)
        return init

    inits = [external("table", 0)] + ([] if tied else [external("head", table.nbytes)])
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedding"]),
             helper.make_node("Gemm", ["hidden", "table" if tied else "head"], ["logits"], transB=1)]
    outputs = [helper.make_tensor_value_info("embedding", elem, ["T", HIDDEN]),
               helper.make_tensor_value_info("logits", elem, ["m", VOCAB])]
    if constant_gather:
        inits.append(numpy_helper.from_array(np.array([5, 0, 63]), "rows"))
        nodes.append(helper.make_node("Gather", ["table", "rows"], ["picked"]))
        outputs.append(helper.make_tensor_value_info("picked", elem, [3, HIDDEN]))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T"]),
                                              helper.make_tensor_value_info("hidden", elem, ["m", HIDDEN])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, tmp_path):
    path = tmp_path / "engine.onnx"
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float32 if model.graph.initializer[0].data_type == TensorProto.FLOAT else np.float16
    feeds = {"ids": np.array([3, 63, 0, 3]), "hidden": np.random.default_rng(1).standard_normal((5, HIDDEN)).astype(dtype)}
    return session.run(None, feeds)


def _views(model):
    return {init.name: {entry.key: entry.value for entry in init.external_data} for init in model.graph.initializer
            if init.data_location == TensorProto.EXTERNAL}


def test_views_give_the_same_results_over_the_same_bytes(tmp_path):
    model = _engine(tmp_path)
    before = _run(model, tmp_path)
    assert share_tied_table(model, chunk_bytes=1000)  # 15 rows -> rounded down to a page: 64 rows per chunk
    nodes = {node.output[0]: node for node in model.graph.node}
    assert nodes["embedding"].input[0] == "table" + GATHER_VIEW_SUFFIX
    assert [node.op_type for node in model.graph.node].count("Gemm") == 1  # 64 rows: one chunk, no split
    for after, expected in zip(_run(model, tmp_path), before):
        assert np.array_equal(after, expected)
    views = _views(model)
    assert views["table" + GATHER_VIEW_SUFFIX] == {"location": "weights.bin", "offset": "0", "length": str(VOCAB * HIDDEN * 4)}
    assert nodes["logits"].input[1] == "table"  # one chunk: the LM head reads the table itself


@pytest.mark.parametrize("constant_gather", [True, False])
def test_the_lm_head_reads_the_table_in_page_aligned_chunks(tmp_path, monkeypatch, constant_gather):
    monkeypatch.setattr(tied_table, "PAGE", 1024)  # 16 rows of 64 bytes per page, so a tiny table splits
    model = _engine(tmp_path, constant_gather=constant_gather)
    before = _run(model, tmp_path)
    assert share_tied_table(model, chunk_bytes=1500)  # 23 rows -> whole pages: 16 rows per chunk
    chunks = [node for node in model.graph.node if node.op_type == "Gemm"]
    assert len(chunks) == 4
    views = _views(model)
    spans = [(int(views[node.input[1]]["offset"]), int(views[node.input[1]]["length"])) for node in chunks]
    assert spans == [(row * HIDDEN * 4, 16 * HIDDEN * 4) for row in range(0, VOCAB, 16)]
    concat = next(node for node in model.graph.node if node.op_type == "Concat")
    assert list(concat.input) == [node.output[0] for node in chunks] and concat.output[0] == "logits"
    for after, expected in zip(_run(model, tmp_path), before):
        assert np.array_equal(after, expected)
    assert ("table" in views) == constant_gather  # the original stays only while a constant Gather reads it


@pytest.mark.parametrize("case", ["untied", "fp16"])
def test_other_tables_are_left_alone(tmp_path, case):
    model = _engine(tmp_path, tied=case != "untied", table_dtype=np.float16 if case == "fp16" else np.float32)
    before = model.SerializeToString()
    assert not share_tied_table(model)
    assert model.SerializeToString() == before


def test_tied_artifact_is_lossless_with_chunked_lm_head(tmp_path, model_dirs, monkeypatch):
    """The tiny Llama is tied: its fp32 artifact's LM head reads 8 chunks, its Gathers a view."""
    from conftest import random_heads
    from test_runtime import autoregressive, prompts

    from hydra_export.artifact_builder import BuildOptions, build_artifact
    from hydra_runtime import TreeBuffers

    monkeypatch.setattr(tied_table, "CHUNK_BYTES", 4096)  # 16 rows of the 128 x 64 table
    base = load_base_model(model_dirs["llama"])
    heads = random_heads(base, "hydra++")
    artifact = build_artifact(base, heads, TreeBuffers.from_name("tree16", copy_nodes=4), tmp_path / "artifact",
                              BuildOptions("tree16", max_seq_len=256))
    engine = onnx.load(str(artifact / "engine.onnx"), load_external_data=False)
    names = [init.name for init in engine.graph.initializer]
    assert sum(".rows_" in name for name in names) == 8 and any(n.endswith(GATHER_VIEW_SUFFIX) for n in names)
    generator = Generator.load(artifact)
    for i, prompt in enumerate(prompts(3, seed=7)):
        expected = autoregressive(base, prompt, 12 + 8 * i)
        for mode in ("hydra", "autoregressive"):
            assert generator.generate_ids(prompt, 12 + 8 * i, mode=mode)[0] == expected


def test_untied_artifact_has_no_views(artifacts):
    engine = onnx.load(str(artifacts("qwen2", "hydra++") / "engine.onnx"), load_external_data=False)
    assert not any(GATHER_VIEW_SUFFIX in init.name or ".rows_" in init.name for init in engine.graph.initializer)
