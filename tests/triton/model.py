"""Triton python-backend model: an MLP computed with numpy from the weights in an .npz.

config.pbtxt parameters (string values):
  weights     path of the .npz (tests/triton/make_mlp.py describes the format:
              `layers.I.weight` [in, out], `layers.I.bias` [out], ReLU between layers)
  delay_ms    sleep this many ms per request before answering (a straggler; default 0)
  delay_file  optional path; while it exists, its integer content replaces delay_ms, read on
              every batch (so a test can slow a running instance down and speed it up again)

One FP32 input (any name, [batch, in]) and one FP32 output ([batch, out]); the names come from
the configuration. Requests in one execute() call (dynamic batching) are computed as one
matrix product.
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def load_layers(path):
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("layers.") and k.endswith(".weight"))
        if n == 0:
            raise ValueError(f"{path}: no layers.I.weight arrays (have {z.files})")
        return [(z[f"layers.{i}.weight"].astype(np.float32), z[f"layers.{i}.bias"].astype(np.float32)) for i in range(n)]


def forward(layers, x):
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i + 1 < len(layers):
            np.maximum(h, 0.0, out=h)
    return h


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.layers = load_layers(params["weights"])
        self.delay_ms = float(params.get("delay_ms", "0") or 0)
        self.delay_file = params.get("delay_file") or None
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.input_len = self.layers[0][0].shape[0]
        # The last dim is the features (leading ones may be -1 or 1 in a config without batching).
        want_in = int(config["input"][0]["dims"][-1])
        want_out = int(config["output"][0]["dims"][-1])
        have_out = self.layers[-1][0].shape[1]
        if (want_in, want_out) != (self.input_len, have_out):
            raise ValueError(f"config dims {want_in} -> {want_out} do not match weights {self.input_len} -> {have_out}")

    def current_delay_ms(self):
        if self.delay_file:
            try:
                with open(self.delay_file) as f:
                    return float(f.read().strip() or 0)
            except FileNotFoundError:
                pass
        return self.delay_ms

    def execute(self, requests):
        delay = self.current_delay_ms()
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        rows = [x.reshape(-1, self.input_len).astype(np.float32, copy=False) for x in xs]
        y = forward(self.layers, np.concatenate(rows)) if rows else None
        if delay > 0:
            time.sleep(delay * len(requests) / 1000.0)  # per request, as if they ran one by one
        out, start = [], 0
        for r in rows:
            part = np.ascontiguousarray(y[start:start + len(r)])
            start += len(r)
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]))
        return out
