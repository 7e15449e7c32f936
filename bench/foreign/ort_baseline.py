"""ONNX Runtime (Python, PyPI) on an ONNX file, in process, the baseline of parm worker on the
same file: single-query latency (p50 / p99 of 2,000 sequential calls, microseconds) and
throughput (queries/s) at batch 1 and batch 64 with ORT's default threads. One JSON line.

Usage: python ort_baseline.py MODEL.onnx INPUTS.npy [--threads N]
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

path, inputs = sys.argv[1], np.load(sys.argv[2])
opts = ort.SessionOptions()
if "--threads" in sys.argv:
    opts.intra_op_num_threads = int(sys.argv[sys.argv.index("--threads") + 1])
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
x = inputs.astype(np.float32)
if inputs.dtype == np.uint8:
    x = x / 255.0
x = x.reshape((len(x),) + tuple(d if isinstance(d, int) else -1 for d in inp.shape[1:])).astype(np.float32)
out_name = [o.name for o in sess.get_outputs() if "prob" in o.name or "logit" in o.name or o.name == "output"]
outputs = out_name[:1] or None


def run(batch):
    return sess.run(outputs, {inp.name: batch})


for i in range(200):
    run(x[i:i + 1])
lat = []
for i in range(2000):
    q = x[i % len(x):i % len(x) + 1]
    t = time.perf_counter()
    run(q)
    lat.append((time.perf_counter() - t) * 1e6)
lat.sort()
result = {"model": path, "p50_us": lat[len(lat) // 2], "p99_us": lat[int(len(lat) * 0.99)]}
for b in (1, 64):
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0:
        i = (n * b) % max(1, len(x) - b)
        run(x[i:i + b])
        n += 1
    result[f"qps_batch{b}"] = n * b / (time.perf_counter() - t)
print(json.dumps(result))
