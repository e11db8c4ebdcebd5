"""A tied embedding table kept resident once under ONNX Runtime's CPU weight prepacking.

When the LM head is the token embedding (SmolLM2, Qwen2-0.5B, Llama-3.2-1B), one [V, H]
initializer feeds both the embedding Gathers and the LM head's Gemm. ONNX Runtime's CPU Gemm
copies a constant weight into its own packed layout and drops the original, unless another
node still reads it: the Gathers do, so the table stayed resident twice (packed, and mapped
whole, since packing read every page): 108 MB of SmolLM2-135M's 575 MB.

This pass rewrites the saved graph (weights stay where they are in the weights file):
- the Gathers read a view of the same bytes under another name, which ONNX Runtime maps on its
  own; only the rows looked up become resident;
- the LM head's Gemm (and any head projecting through it) reads the table in row chunks (views
  again) whose outputs are concatenated, so loading holds at most one chunk's mapping beside the
  packed table, not the whole table twice.
Nothing is added to the weights file. The views need page-aligned offsets to be mapped, not
read: the export aligns every tensor to ``PAGE`` bytes, and chunks are whole pages of rows.
Only for fp32 engines run by ONNX Runtime (its CPU packing is fp32); a GPU would hold a view as
another copy.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper
from onnx.external_data_helper import ExternalDataInfo

PAGE = 4096  # mmap granularity on Linux: views at page-aligned offsets are mapped, not copied
CHUNK_BYTES = 32 << 20  # the LM head reads the table in chunks of about this size
GATHER_VIEW_SUFFIX = ".gather_view"
FLOAT_BYTES = 4  # the tables this pass rewrites are fp32


def share_tied_table(model: onnx.ModelProto, chunk_bytes: int | None = None) -> bool:
    """Rewrite ``model`` (loaded without its external data) in place; True if a tied table was found.

    A tied table: an external fp32 [V, H] initializer read by at least one Gather on runtime
    indices (axis 0) and by Gemms as their B operand (transB=1, no C, alpha 1: the LM head, and
    heads that project through it), and by nothing else. The Gemms share the chunk views (ONNX
    Runtime packs an initializer once for all its readers). Gathers on constant indices (the
    draft vocabulary's rows, folded when the engine loads) keep reading the original, which then
    has no other reader and is released after folding (it is removed when nothing reads it).
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer} | {out for node in graph.node if node.op_type == "Constant"
                                                              for out in node.output}
    readers_of: dict[str, list[tuple[onnx.NodeProto, int]]] = {}  # name -> (node, input index) reading it
    for node in graph.node:
        for index, name in enumerate(node.input):
            readers_of.setdefault(name, []).append((node, index))
    for init in list(graph.initializer):
        if not _is_external_fp32_matrix(init):
            continue
        readers = readers_of.get(init.name, [])
        gathers = [node for node, index in readers if node.op_type == "Gather" and index == 0
                   and _attribute(node, "axis", 0) == 0]
        gemms = [node for node, index in readers if node.op_type == "Gemm" and index == 1 and _plain_gemm_bt(node)]
        looked_up = [node for node in gathers if node.input[1] not in constants]
        if not looked_up or not gemms or len(gathers) + len(gemms) != len(readers):
            continue
        view = _row_view(init, init.name + GATHER_VIEW_SUFFIX, 0, init.dims[0])
        graph.initializer.append(view)
        for node in looked_up:
            node.input[0] = view.name
        _split_gemms(graph, gemms, init, chunk_bytes or CHUNK_BYTES)
        if not any(init.name in node.input for node in graph.node):  # ONNX Runtime would warn of it
            graph.initializer.remove(init)
        return True
    return False


def _is_external_fp32_matrix(init: TensorProto) -> bool:
    return init.data_location == TensorProto.EXTERNAL and init.data_type == TensorProto.FLOAT and len(init.dims) == 2


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _plain_gemm_bt(node: onnx.NodeProto) -> bool:
    """Y = A · Bᵀ exactly: transB set, no transA, no C, alpha 1."""
    return (len(node.input) == 2 or not node.input[2]) and _attribute(node, "transB", 0) == 1 \
        and _attribute(node, "transA", 0) == 0 and _attribute(node, "alpha", 1.0) == 1.0


def _row_bytes(init: TensorProto) -> int:
    return math.prod(init.dims[1:]) * FLOAT_BYTES


def _row_view(init: TensorProto, name: str, first_row: int, rows: int) -> TensorProto:
    """Rows [first_row, first_row + rows) of ``init`` as an initializer over the same bytes."""
    external = ExternalDataInfo(init)
    view = TensorProto(name=name, data_type=init.data_type, dims=[rows, *init.dims[1:]],
                       data_location=TensorProto.EXTERNAL)
    offset = (external.offset or 0) + first_row * _row_bytes(init)
    for key, value in (("location", external.location), ("offset", offset), ("length", rows * _row_bytes(init))):
        view.external_data.add(key=key, value=str(value))  # set_external_data wants raw data to move out
    return view


def _split_gemms(graph: onnx.GraphProto, gemms: list[onnx.NodeProto], table: TensorProto, chunk_bytes: int) -> None:
    """Each Gemm(x, table, transB) -> Concat(Gemm(x, rows_0, transB), ...) along the output's last
    axis; the row views are shared by all of them."""
    vocab, row_bytes = table.dims[0], _row_bytes(table)
    rows_per_page = PAGE // math.gcd(row_bytes, PAGE)  # chunk offsets stay page-aligned
    rows = max(rows_per_page, chunk_bytes // row_bytes // rows_per_page * rows_per_page)
    if rows >= vocab:
        return
    views = [_row_view(table, f"{table.name}.rows_{chunk}", first, min(rows, vocab - first))
             for chunk, first in enumerate(range(0, vocab, rows))]
    graph.initializer.extend(views)
    for gemm in gemms:
        position = list(graph.node).index(gemm)
        parts = [helper.make_node("Gemm", [gemm.input[0], view.name], [f"{gemm.output[0]}.part_{chunk}"],
                                  name=f"{gemm.output[0]}.part_{chunk}", transB=1) for chunk, view in enumerate(views)]
        concat = helper.make_node("Concat", [part.output[0] for part in parts], [gemm.output[0]],
                                  name=f"{gemm.output[0]}.concat", axis=-1)
        graph.node.remove(gemm)
        for offset, node in enumerate([*parts, concat]):
            graph.node.insert(position + offset, node)
