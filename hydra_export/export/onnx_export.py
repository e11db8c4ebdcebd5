"""torch.onnx (dynamo) export of the engine graph, its weights streamed into one file."""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from ..cyclic_gc import cyclic_gc_paused
from ..errors import HydraExportError
from .graph_specs import GraphSpec
from .layer_stamp import TRANSLATION_TABLE, LayerTrace, inline_layers, stamped_layers
from .tied_table import PAGE, share_tied_table
from .weights_writer import WeightsWriter

OPSET = 18

# The exporter logs a warning per missing optional op library (torchvision); not ours to act on.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
WEIGHTS_FILE = "weights.bin"
ALIGNMENT = PAGE  # every tensor in the weights file starts on a page: ONNX Runtime maps it instead of copying
INLINE_BYTES = 1024  # smaller constants stay inside the graph
# Parameters at least this large are written while the graph is traced: the weight matrices, not
# the norms and biases (a norm the graph does not read, e.g. one folded away, would leave dead bytes).
WRITE_AHEAD_BYTES = 64 << 10
# Equal constants up to this many elements are merged (so CSE can merge the nodes that read them):
# folding leaves one copy of e.g. the draft vocabulary's ids per head that uses it, and ONNX Runtime
# would fold and prepack a [V', H] table per copy. Weight matrices are larger and never compared.
DEDUPLICATE_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class ExportedGraph:
    model: onnx.ModelProto  # the saved graph without its weights (for the manifest's signature)
    weights: WeightsWriter  # ``hexdigest(path)``: the weights file's sha256


def export_graph(spec: GraphSpec, out_dir: Path, progress=None, share_tied: bool = False) -> ExportedGraph:
    """Trace ``spec.module`` once and write ``<name>.onnx`` plus ``weights.bin`` to ``out_dir``.

    The module's parameters are written to the weights file on another thread while the graph
    is traced (weights_writer), straight from its own tensors: the build holds the weights once.
    ``progress(done, total)`` is called while weights are written (MiB). ``share_tied``: keep
    a tied embedding table resident once under ONNX Runtime's CPU prepacking (see tied_table).
    The caller closes the returned writer (``hexdigest`` does).
    """
    shared: dict[str, torch.export.Dim] = {}  # one Dim object per symbolic name
    dims = []
    for name in spec.input_names:
        axes = spec.dynamic_dims.get(name)
        dims.append({axis: shared.setdefault(symbol, torch.export.Dim(symbol, min=spec.dim_ranges[symbol][0],
                                                                      max=spec.dim_ranges[symbol][1]))
                     for axis, symbol in axes.items()} if axes else None)
    template = spec.layer_template
    stamping = stamped_layers(spec.module, template) if template else contextlib.nullcontext()
    path = Path(out_dir) / f"{spec.name}.onnx"
    writer = WeightsWriter(Path(out_dir) / WEIGHTS_FILE, spec.module.parameters(), ALIGNMENT, WRITE_AHEAD_BYTES)
    layer_trace = LayerTrace(template, OPSET) if template else None  # forks: before the writer's thread starts
    writer.start()
    try:
        with warnings.catch_warnings(), torch.no_grad(), stamping, cyclic_gc_paused():
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    spec.module,
                    spec.sample_inputs,
                    dynamo=True,
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    dynamic_shapes=_nest_varargs(spec.module, dims),
                    opset_version=OPSET,
                    optimize=False,  # the full onnxscript rewriter took half the build time: see _fold
                    verbose=False,
                    custom_translation_table=TRANSLATION_TABLE if template else None,
                )
                if layer_trace:
                    inline_layers(program.model, layer_trace)
            except Exception as error:  # the exporter raises many types; name the graph and re-raise typed
                raise HydraExportError(f"tracing the {spec.name} graph failed: {error}") from error
        _name_dynamic_dims(program.model, spec)
        _share_input_sizes(program.model)
        _fold(program.model)
        program.model.metadata_props.update(spec.metadata)
        writer.wait(progress)
        if writer.place(program.model, WEIGHTS_FILE, INLINE_BYTES):
            ir.save(program.model, str(path))  # the graph; its weights are in place
        else:  # a written parameter is not read: rewrite the file with only what the graph reads
            writer.rewritten()
            ir.save(program.model, str(path), external_data=WEIGHTS_FILE, size_threshold_bytes=INLINE_BYTES,
                    alignment=ALIGNMENT, align_threshold=0)
        del program
        model = onnx.load(str(path), load_external_data=False)
        if share_tied and share_tied_table(model):
            onnx.save(model, str(path))  # the graph only: its weights stay as written
    except BaseException:
        writer.close()
        raise
    finally:
        if layer_trace:
            layer_trace.cancel()
    return ExportedGraph(model, writer)


def _fold(model) -> None:
    """Constant folding, constants lifted to initializers, common subexpressions merged, dead
    nodes removed: the engine's node count halves (4,458 -> 2,451 for SmolLM2), which matters
    on a CPU where every node costs a launch per step. The exporter's default optimizer also
    runs onnxscript's pattern rewriter, which took 70 s of a 135M build for 45 fewer nodes;
    ONNX Runtime and TensorRT fuse such patterns themselves when they load the engine."""
    import onnxscript.optimizer
    from onnx_ir.passes import common

    cleanup = ir.passes.PassManager([
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(size_limit=DEDUPLICATE_ELEMENTS),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
    ])
    for _ in range(2):  # folding after CSE finds a few more constants
        onnxscript.optimizer.fold_constants(model)
        cleanup(model)


def _share_input_sizes(model) -> None:
    """Read each named dynamic size from one graph input: inputs that share a dim name share its
    size (all ``past_key_values.*`` have ``past_sequence``), but a layer traced alone and stamped
    reads it from its own past tensor; one Shape instead lets CSE merge the arithmetic after it."""
    first: dict[str, tuple[object, int]] = {}  # dim name -> (graph input, axis)
    for value in model.graph.inputs:
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                first.setdefault(dim.value, (value, axis))
    for node in model.graph:
        source = node.inputs[0] if node.op_type == "Shape" and node.inputs else None
        if source is None or not source.is_graph_input() or source.shape is None:
            continue
        rank = len(source.shape)
        start = node.attributes.get_int("start", 0) % rank
        end = node.attributes.get_int("end", rank)
        dim = source.shape[start]
        if end != start + 1 or not (isinstance(dim, ir.SymbolicDim) and dim.value in first):
            continue
        shared, axis = first[dim.value]
        node.replace_input_with(0, shared)
        node.attributes["start"] = ir.AttrInt64("start", axis)
        node.attributes["end"] = ir.AttrInt64("end", axis + 1)


def _nest_varargs(module: torch.nn.Module, per_input: list) -> tuple:
    """torch.export wants a ``*past`` parameter's shapes as one nested tuple."""
    parameters = inspect.signature(module.forward).parameters.values()
    fixed = sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if any(p.kind == p.VAR_POSITIONAL for p in parameters) and len(per_input) > fixed:
        # {} rather than None for static inputs: a tuple of only Nones is not matched structurally.
        return (*per_input[:fixed], tuple(dims if dims is not None else {} for dims in per_input[fixed:]))
    return tuple(per_input)


def _name_dynamic_dims(model, spec: GraphSpec) -> None:
    """Give dynamic axes the names users see in the manifest (past_sequence, new_tokens, ...)."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        axes = spec.dynamic_dims.get(value.name, {})
        if axes and value.shape is not None:
            dims = list(value.shape)
            for axis, symbol in axes.items():
                dims[axis] = ir.SymbolicDim(symbol)
            value.shape = ir.Shape(dims)
