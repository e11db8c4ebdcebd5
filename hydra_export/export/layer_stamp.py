"""Trace one decoder layer, stamp it at every layer.

Tracing costs time per traced operator: torch.export and the exporter's decomposition
re-trace spent ~3 s per decoder layer (103 s of SmolLM2's 2-minute build, 30 layers), and a
70B model has 80 layers. The layers of a Llama-family stack are one computation with
different weights, so:

1. the engine is traced with every layer call replaced by one opaque operator,
   ``hydra_export::decoder_layer(cos, sin, bias, x, past_key, past_value, weights)``, whose
   weights are the layer's own parameters (they stay the engine's initializers);
2. one layer is traced alone, its weights as graph inputs, into an ONNX function;
3. the function is inlined at every call, and the engine is folded as before (common
   subexpression elimination merges the per-layer shape arithmetic, as it did in a full trace).

The result has the operators a full trace gives, layer for layer. Layers that differ from the
template (another class, other parameter names, shapes or dtypes) are traced in full.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import warnings

import torch
from torch import nn

from .flat_decoder import decoder_layer

DOMAIN = "hydra_export"
OP_NAME = "DecoderLayer"
SAMPLE_TOKENS = 3  # sample sizes for tracing the layer; its dims stay dynamic
SAMPLE_PAST = 5


@torch.library.custom_op(f"{DOMAIN}::decoder_layer", mutates_args=())
def _opaque_layer(cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                  past_key: torch.Tensor, past_value: torch.Tensor, weights: list[torch.Tensor], num_kv_heads: int,
                  head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise RuntimeError("hydra_export::decoder_layer only stands for a layer while the engine is traced")


@_opaque_layer.register_fake
def _(cos, sin, bias, x, past_key, past_value, weights, num_kv_heads, head_dim):
    """x [T, H] -> x [T, H], key and value [1, T, kv, d] (what decoder_layer returns)."""
    t = x.shape[0]
    return x.new_empty(x.shape), x.new_empty(1, t, num_kv_heads, head_dim), x.new_empty(1, t, num_kv_heads, head_dim)


def _onnx_opset():
    """An onnxscript opset whose DecoderLayer has a schema (variadic inputs, three outputs)."""
    import onnx
    import onnxscript

    try:
        onnx.defs.get_schema(OP_NAME, 1, DOMAIN)
    except onnx.defs.SchemaError:
        parameter = onnx.defs.OpSchema.FormalParameter
        onnx.defs.register_schema(onnx.defs.OpSchema(
            OP_NAME, DOMAIN, 1,
            inputs=[parameter("inputs", "T", param_option=onnx.defs.OpSchema.FormalParameterOption.Variadic)],
            outputs=[parameter(name, "T") for name in ("hidden", "key", "value")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "layer dtype")],
        ))
    return onnxscript.values.Opset(DOMAIN, 1)


def _translate(cos, sin, bias, x, past_key, past_value, weights, num_kv_heads, head_dim):
    return _onnx_opset().DecoderLayer(cos, sin, bias, x, past_key, past_value, *weights)


TRANSLATION_TABLE = {torch.ops.hydra_export.decoder_layer.default: _translate}


def _signature(layer: nn.Module) -> tuple:
    return tuple((name, tuple(p.shape), p.dtype) for name, p in layer.named_parameters())


class LayerTemplate:
    """One decoder layer standing for every layer of the same signature; ``shape`` =
    (num_heads, num_kv_heads, head_dim)."""

    def __init__(self, layer: nn.Module, shape: tuple[int, int, int]):
        self.layer = layer
        self.layer_class = type(layer)  # now: torch.export traces modules through subclasses of their classes
        self.shape = shape
        self.signature = _signature(layer)  # (name, shape, dtype) per parameter

    def call(self, layer, x, rotary, past_key, past_value, bias, num_heads, num_kv_heads, head_dim):
        """decoder_layer's signature; an opaque call where ``layer`` matches the template."""
        if (not isinstance(layer, self.layer_class) or _signature(layer) != self.signature
                or (num_heads, num_kv_heads, head_dim) != self.shape):
            return decoder_layer(layer, x, rotary, past_key, past_value, bias, num_heads, num_kv_heads, head_dim)
        cos, sin = rotary
        weights = [parameter for _, parameter in layer.named_parameters()]
        return torch.ops.hydra_export.decoder_layer(cos, sin, bias, x, past_key, past_value, weights,
                                                    num_kv_heads, head_dim)

    def trace(self, opset: int):
        """The template as an ONNX function of (cos, sin, bias, x, past_key, past_value, *weights).

        The inputs every layer shares come first and own the symbolic sizes: the function reads
        T and P + T from cos and bias, so once inlined, one shape computation serves every layer."""
        import onnx_ir as ir

        function_module = _LayerWithWeightInputs(self)
        _, kv, d = self.shape
        dtype = next(self.layer.parameters()).dtype
        hidden = self.layer.input_layernorm.weight.shape[0]
        t, p = SAMPLE_TOKENS, SAMPLE_PAST
        tokens = torch.export.Dim("tokens", min=0, max=1 << 20)
        length = torch.export.Dim("length", min=0, max=1 << 20)  # P + T
        samples = (torch.randn(t, 1, d, dtype=dtype), torch.randn(t, 1, d, dtype=dtype),
                   torch.zeros(t, p + t, dtype=dtype), torch.randn(t, hidden, dtype=dtype),
                   torch.randn(1, p, kv, d, dtype=dtype), torch.randn(1, p, kv, d, dtype=dtype),
                   *(parameter.detach() for parameter in self.layer.parameters()))
        past = {1: torch.export.Dim.AUTO}  # length - tokens: inferred, not declarable
        shapes = ({0: tokens}, {0: tokens}, {0: tokens, 1: length}, {0: tokens}, past, past,
                  tuple({} for _ in self.signature))  # {}: a tuple of Nones is not matched
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(function_module, samples, dynamo=True, dynamic_shapes=shapes,
                                        opset_version=opset, optimize=False, verbose=False)
        graph = program.model.graph
        constants = []
        for initializer in list(graph.initializers.values()):  # a function holds constants as nodes
            graph.initializers.pop(initializer.name)
            constants.append(ir.node("Constant", [], attributes={"value": initializer.const_value}))
            initializer.replace_all_uses_with(constants[-1].outputs[0])
        graph.insert_before(graph[0], constants)
        for node in graph:  # the layer's symbolic dims mean other things in the engine
            for value in node.outputs:
                value.shape = None
        return ir.Function(DOMAIN, OP_NAME, "", graph=graph, attributes=[])


class _LayerBody(nn.Module):
    def __init__(self, template: LayerTemplate):
        super().__init__()
        self.layer = template.layer
        self.shape = template.shape

    def forward(self, cos, sin, bias, x, past_key, past_value):
        return decoder_layer(self.layer, x, (cos, sin), past_key, past_value, bias, *self.shape)


class _LayerWithWeightInputs(nn.Module):
    """decoder_layer over the template with its parameters replaced by inputs."""

    def __init__(self, template: LayerTemplate):
        super().__init__()
        self._body = [_LayerBody(template)]  # not a submodule: its parameters must not become initializers
        self.names = [f"layer.{name}" for name, _, _ in template.signature]

    def forward(self, cos, sin, bias, x, past_key, past_value, *weights):
        return torch.func.functional_call(self._body[0], dict(zip(self.names, weights)),
                                          (cos, sin, bias, x, past_key, past_value))


@contextlib.contextmanager
def stamped_layers(engine: nn.Module, template: LayerTemplate):
    """While active, every module of ``engine`` that calls decoder layers through its
    ``call_layer`` attribute makes opaque calls for layers matching ``template``."""
    callers = [module for module in engine.modules() if hasattr(module, "call_layer")]
    previous = [module.call_layer for module in callers]
    for module in callers:
        module.call_layer = template.call
    try:
        yield
    finally:
        for module, call in zip(callers, previous):
            module.call_layer = call


class LayerTrace:
    """``template.trace(opset)`` in a forked process, started at construction and collected by
    ``function()``: the layer's trace does not depend on the engine's, so on a 2-core machine it
    runs on the other core while the engine is traced (~4 s of a 1.1B build). Where there is no
    fork, or the child fails for any reason, ``function()`` traces in this process instead (and
    raises what the trace raises)."""

    def __init__(self, template: LayerTemplate, opset: int):
        self._template, self._opset = template, opset
        self._child: tuple[int, int] | None = None  # (pid, read end of its pipe)
        if not hasattr(os, "fork"):
            return
        read, write = os.pipe()
        # A signal whose handler runs during fork runs it inside Python's at-fork callbacks, which
        # swallow the exception: SIGTERM's KeyboardInterrupt was lost and the build went on. So
        # SIGINT/SIGTERM are blocked across the fork; one that arrived just before the block (its
        # handler not yet run) runs it before the fork, and one held back is delivered when the
        # mask is restored, where it stops the build (and the child, if there is one).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _run_pending_signal_handlers()
            pid = os.fork()
        except BaseException as error:
            os.close(read)
            os.close(write)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if isinstance(error, OSError):  # no resources for another process: trace here
                return
            raise
        if pid == 0:
            _trace_in_child(template, opset, read, write, mask)  # restores the mask there; never returns
        os.close(write)
        self._child = (pid, read)
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # runs a held-back signal's handler
        except BaseException:
            self.cancel()
            raise

    def function(self):
        """The template as an ONNX function (see LayerTemplate.trace)."""
        import onnx
        import onnx_ir as ir

        if self._child is not None:
            pid, read = self._child
            self._child = None
            with os.fdopen(read, "rb") as pipe:
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
            if status == 0 and data:
                return ir.serde.deserialize_function(onnx.FunctionProto.FromString(data))
        return self._template.trace(self._opset)

    def cancel(self) -> None:
        """Stop the child, if any (idempotent)."""
        if self._child is not None:
            pid, read = self._child
            self._child = None
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)


def _run_pending_signal_handlers() -> None:
    """Run the Python handlers of signals already received (Python runs them only between
    bytecodes, so one that arrived during a C call waits); raises what a handler raises."""
    ctypes.pythonapi.PyErr_CheckSignals()


def _trace_in_child(template: LayerTemplate, opset: int, read: int, write: int, mask) -> None:
    """The forked child: restore the signal ``mask``, trace, send the serialized function down
    the pipe, leave without running the parent's exit handlers (status 0 only when the whole
    function was sent; nothing raised here unwinds into the parent's code)."""
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(read)
        quiet = os.open(os.devnull, os.O_WRONLY)  # the parent's progress display owns the terminal
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        import onnx_ir as ir

        data = ir.serde.serialize_function(template.trace(opset)).SerializeToString()
        with os.fdopen(write, "wb") as pipe:
            pipe.write(data)
        status = 0
    finally:
        os._exit(status)


def inline_layers(model, layer_trace: LayerTrace) -> int:
    """Inline the traced template at every opaque layer call of ``model`` (an onnx_ir Model);
    returns how many calls were inlined."""
    from onnx_ir.passes import common

    calls = sum(1 for node in model.graph if node.domain == DOMAIN)
    if not calls:
        return 0
    function = layer_trace.function()
    model.functions[function.identifier()] = function
    model.opset_imports.setdefault(DOMAIN, 1)
    common.InlinePass()(model)
    model.functions.pop(function.identifier(), None)
    model.opset_imports.pop(DOMAIN, None)
    return calls
