"""Triton Python-backend model for the digits TorchScript file (copied into the model
repository as `<model>/1/model.py`; it runs inside Triton's backend stub, so it imports
nothing from this repository).

The stub's interpreter sees Triton's own virtualenv (numpy<2); torch comes from the
site-packages directories named in the `site_packages` parameter of config.pbtxt, appended
after it. Triton's dynamic batcher hands `execute` several requests; their rows run as one
model call and each response gets back its own rows, in order; a request whose outputs
are not finite gets an INVALID_ARG error instead.
"""

import gc
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        sys.path.extend(p for p in parameters.get("site_packages", "").split(os.pathsep) if p)
        import torch

        self.torch = torch
        torch.set_num_threads(int(parameters.get("threads", "1")))
        here = os.path.join(args["model_repository"], args["model_version"])
        self.model = torch.jit.load(os.path.join(here, parameters["model_file"]), map_location="cpu").eval()
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        gc.freeze()  # as the reference server does once warm: no ~100 ms full collections of torch under load

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        with self.torch.inference_mode():
            outputs = self.model(self.torch.from_numpy(np.concatenate(arrays))).numpy()
        responses, start = [], 0
        for rows in arrays:
            part = np.ascontiguousarray(outputs[start:start + len(rows)])
            start += len(rows)
            if np.isfinite(part).all():
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
            else:  # JSON cannot carry inf/NaN: inputs far outside the model's range
                error = pb_utils.TritonError("the model's outputs for these inputs are not finite numbers",
                                             pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
