"""Triton Python-backend model hosting a PoseLoop ONNX file with ONNX Runtime.

This file is a template: `serving.triton.repository.write_model_version` copies it to
<repo>/<model>/<version>/model.py next to model.onnx. It runs inside Triton's `triton_python_backend_stub`
process (one process per model instance), so it imports nothing from PoseLoop.

Config parameters read (string values):
- sys_path: os.pathsep-separated directories prepended to sys.path before importing onnxruntime (the stub
  does not honour PYTHONPATH; this is how it finds the PoseLoop venv's site-packages);
- intra_op_thread_count / inter_op_thread_count: ONNX Runtime thread counts (0 = ORT decides: all cores).

Tensors: the config's single float32 input and every output it lists. With max_batch_size ≥ 1 (the pose model:
(N, 3, H, W) → (N, K, h, w)) the requests Triton queued are concatenated on axis 0 into one session.run; with
max_batch_size 0 (the person detector: fixed shapes) each request runs on its own.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the stub


class TritonPythonModel:
    """initialize builds one InferenceSession; execute runs every queued request in one session.run."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        for entry in reversed([p for p in params.get("sys_path", "").split(os.pathsep) if p]):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        import onnxruntime as ort

        (inp,) = config["input"]
        self.input_name = inp["name"]
        self.output_names = [o["name"] for o in config["output"]]
        self.input_dims = tuple(int(d) for d in inp["dims"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", "1"))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.where = f"{args['model_name']} version {args['model_version']}"

    def execute(self, requests):
        """One response per request, in order; a bad request or a failed run answers with a TritonError."""
        responses = [None] * len(requests)
        batches, owners = [], []
        for i, request in enumerate(requests):
            try:
                batches.append(self._input(request))
                owners.append(i)
            except Exception as err:
                responses[i] = _error(f"{self.where}: {err}")
        groups = [(owners, batches)] if self.batching else [([i], [b]) for i, b in zip(owners, batches)]
        for group_owners, group in groups:
            if group:
                self._run(group_owners, group, responses)
        return responses

    def _run(self, owners, batches, responses):
        """One session.run over `batches` (concatenated on axis 0); each owner gets its rows of every output."""
        try:
            batch = batches[0] if len(batches) == 1 else np.concatenate(batches)
            outputs = self.session.run(self.output_names, {self.input_name: batch})
            cuts = np.cumsum([len(b) for b in batches])[:-1]
            per_output = [np.split(out, cuts) if len(batches) > 1 else [out] for out in outputs]
            for j, i in enumerate(owners):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(parts[j]))
                    for name, parts in zip(self.output_names, per_output)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as err:
            for i in owners:
                responses[i] = _error(f"{self.where}: onnxruntime failed: {err}")

    def finalize(self):
        self.session = None

    def _input(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise ValueError(f"request has no input {self.input_name!r}")
        x = tensor.as_numpy()
        shape = x.shape[1:] if self.batching else x.shape
        if (
            x.dtype != np.float32
            or len(shape) != len(self.input_dims)
            or any(d not in (-1, s) for d, s in zip(self.input_dims, shape))
        ):
            expected = f"(N, {self.input_dims})" if self.batching else str(self.input_dims)
            raise ValueError(f"input {x.dtype} {x.shape}, expected float32 {expected}")
        return x


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
