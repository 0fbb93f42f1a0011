"""Triton Inference Server integration: repository layout and configs, a managed tritonserver process.

`repository` writes model versions and config.pbtxt (Python-backend config for CPU serving, native
onnxruntime config for GPU production, both from one description of the ONNX I/O); `server` launches the
tritonserver binary bundled in the nvidia-pytriton wheel; `serving.triton.backend.TritonBackend` talks to it.
"""
