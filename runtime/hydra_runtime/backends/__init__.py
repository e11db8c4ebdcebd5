"""Engine runtimes behind one DecodeBackend protocol: ONNX Runtime (CPU, CUDA) and TensorRT."""
