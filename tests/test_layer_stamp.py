"""One decoder layer traced and stamped at every layer (layer_stamp) gives the fully traced engine."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from conftest import random_heads
from hydra_export.artifact_verifier import engine_cases
from hydra_export.export import layer_stamp, onnx_export
from hydra_export.export.flat_decoder import decoder_layer
from hydra_export.export.graph_specs import build_engine_spec
from hydra_runtime import TreeBuffers


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model, kind", [("llama", "hydra++"), ("qwen2", "medusa")])
def test_stamped_engine_equals_the_full_trace(request, tmp_path, monkeypatch, model, kind):
    base = request.getfixturevalue(model)
    heads = random_heads(base, kind)
    tree = TreeBuffers.from_name("tree16", copy_nodes=4)
    spec = build_engine_spec(base, heads, tree, 64, torch.float32)
    inlined = []
    real_inline = layer_stamp.inline_layers
    monkeypatch.setattr(onnx_export, "inline_layers", lambda *args: inlined.append(real_inline(*args)))
    (tmp_path / "stamped").mkdir()
    (tmp_path / "full").mkdir()
    stamped = onnx_export.export_graph(spec, tmp_path / "stamped").model
    full = onnx_export.export_graph(dataclasses.replace(spec, layer_template=None), tmp_path / "full").model

    # Every base layer was one opaque call (Hydra++'s context layer, one query row, is traced in full).
    assert inlined == [base.config.num_hidden_layers]
    assert not any(node.domain == layer_stamp.DOMAIN for node in stamped.graph.node)
    assert layer_stamp.DOMAIN not in {opset.domain for opset in stamped.opset_import}
    # The per-layer size arithmetic merged: no more nodes than the full trace.
    assert len(stamped.graph.node) <= len(full.graph.node)
    assert [i.name for i in stamped.graph.input] == [i.name for i in full.graph.input]

    sessions = _session(tmp_path / "stamped" / "engine.onnx"), _session(tmp_path / "full" / "engine.onnx")
    kv = spec.sample_inputs[-1].shape[2:]
    past = {name: np.zeros((1, 0, *kv), np.float32) for name in spec.input_names if name.startswith("past_key")}
    for case, host in engine_cases([5, 9, 33, 7, 12], tree).items():
        outputs = [dict(zip([o.name for o in s.get_outputs()], s.run(None, host | past))) for s in sessions]
        for name, expected in outputs[1].items():
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(outputs[0][name], expected, atol=1e-5, err_msg=f"{case}: {name}")
            else:
                np.testing.assert_array_equal(outputs[0][name], expected, err_msg=f"{case}: {name}")


def test_only_layers_like_the_template_become_opaque_calls(llama, qwen2):
    """A layer of another signature runs (and would be traced) in full; a matching one becomes the
    opaque operator, which refuses to run outside a trace."""
    shape = (4, 2, 16)
    template = layer_stamp.LayerTemplate(llama.decoder.layers[0], shape)
    t = 3
    x = torch.randn(t, 64)
    rotary = (torch.randn(t, 1, 16), torch.randn(t, 1, 16))
    past = torch.zeros(1, 0, 2, 16)
    bias = torch.zeros(t, t)
    other = qwen2.decoder.layers[0]  # q/k/v biases: another parameter signature
    with torch.no_grad():
        got = template.call(other, x, rotary, past, past, bias, *shape)
        want = decoder_layer(other, x, rotary, past, past, bias, *shape)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="only stands for a layer"):
        template.call(llama.decoder.layers[1], x, rotary, past, past, bias, *shape)


def test_stamped_artifact_engine_has_no_opaque_nodes(artifacts):
    model = onnx.load(str(artifacts("llama", "hydra++") / "engine.onnx"), load_external_data=False)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}


def test_the_layer_traced_in_a_forked_process_is_the_one_traced_here(llama, monkeypatch):
    template = layer_stamp.LayerTemplate(llama.decoder.layers[0], (4, 2, 16))
    forked = layer_stamp.LayerTrace(template, onnx_export.OPSET)
    assert forked._child is not None
    from_child = forked.function()

    def no_fork():
        raise OSError("no processes left")

    monkeypatch.setattr(layer_stamp.os, "fork", no_fork)
    here = layer_stamp.LayerTrace(template, onnx_export.OPSET)
    assert here._child is None
    local = here.function()
    assert [(n.op_type, len(n.inputs)) for n in from_child] == [(n.op_type, len(n.inputs)) for n in local]
    assert from_child.identifier() == local.identifier()


def test_a_failed_child_leaves_the_trace_to_this_process(llama, monkeypatch):
    template = layer_stamp.LayerTemplate(llama.decoder.layers[0], (4, 2, 16))
    calls = []

    def failing_trace(opset):
        calls.append(opset)
        raise RuntimeError("cannot trace this layer")

    monkeypatch.setattr(template, "trace", failing_trace)
    trace = layer_stamp.LayerTrace(template, onnx_export.OPSET)  # the child fails the same way
    with pytest.raises(RuntimeError, match="cannot trace this layer"):
        trace.function()
    assert calls == [onnx_export.OPSET]  # this process traced once more, after the child's status
    trace.cancel()  # nothing left to stop


def test_interrupts_are_held_back_across_the_fork(llama, monkeypatch):
    """A SIGTERM during fork ran its handler inside Python's at-fork callbacks, which swallowed
    its KeyboardInterrupt (a build went on to the end): the fork happens with them blocked."""
    import signal

    blocked_at_fork = []

    def fork():
        blocked_at_fork.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))
        raise OSError("no processes left")

    monkeypatch.setattr(layer_stamp.os, "fork", fork)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    layer_stamp.LayerTrace(layer_stamp.LayerTemplate(llama.decoder.layers[0], (4, 2, 16)), onnx_export.OPSET)
    assert {signal.SIGINT, signal.SIGTERM} <= blocked_at_fork[0]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before  # restored after


def test_an_interrupt_received_just_before_the_fork_stops_the_build_there(llama, monkeypatch):
    """A handler not yet run when the signals are blocked runs before the fork (not inside its
    callbacks): no child, its exception propagates, the mask is restored."""
    import signal

    def fork():
        raise AssertionError("forked with a handler still pending")

    monkeypatch.setattr(layer_stamp.os, "fork", fork)

    def pending_sigterm():
        raise KeyboardInterrupt

    monkeypatch.setattr(layer_stamp, "_run_pending_signal_handlers", pending_sigterm)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with pytest.raises(KeyboardInterrupt):
        layer_stamp.LayerTrace(layer_stamp.LayerTemplate(llama.decoder.layers[0], (4, 2, 16)), onnx_export.OPSET)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_an_interrupt_held_back_across_the_fork_stops_the_child_too(llama, monkeypatch):
    """Delivered when the mask is restored (after the fork), the interrupt propagates and the child
    is killed and reaped, not left tracing."""
    import os
    import signal

    children = []
    real_fork, real_sigmask = os.fork, signal.pthread_sigmask

    def fork():
        pid = real_fork()
        if pid == 0:
            os._exit(0)  # a child that would otherwise trace the layer
        children.append(pid)
        return pid

    def sigmask(how, signals):
        previous = real_sigmask(how, signals)
        if how == signal.SIG_SETMASK and children:  # the restore: a held-back SIGTERM's handler runs
            raise KeyboardInterrupt
        return previous

    monkeypatch.setattr(layer_stamp.os, "fork", fork)
    monkeypatch.setattr(layer_stamp.signal, "pthread_sigmask", sigmask)
    with pytest.raises(KeyboardInterrupt):
        layer_stamp.LayerTrace(layer_stamp.LayerTemplate(llama.decoder.layers[0], (4, 2, 16)), onnx_export.OPSET)
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0], os.WNOHANG)  # already reaped by cancel()
