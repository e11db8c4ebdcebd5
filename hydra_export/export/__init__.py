"""Tracing base model + heads into ONNX graphs with the static tree baked in."""
