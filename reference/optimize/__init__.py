"""Model optimisation for production: INT8 quantisation (torch.ao, torchao, ONNX Runtime),
ONNX export + ONNX Runtime, TorchScript, torch.compile / torch.export, and TensorRT.

Every technique turns a trained fp32 model into a `Runtime` (runtimes.py), so accuracy,
tensor conformance, size and latency are measured the same way for all of them.
"""
