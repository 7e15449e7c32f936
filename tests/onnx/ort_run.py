#!/usr/bin/env python3
"""onnxruntime's answer, for comparing parm's (tract's) outputs against:
`ort_run.py MODEL INPUT.f32 SHAPE OUTPUT_NAME OUT.f32`.

INPUT.f32 holds little-endian float32 values of the shape SHAPE (comma-separated, e.g.
`3,1,28,28`), fed to the model's one input; the output named OUTPUT_NAME is written to OUT.f32
as little-endian float32, row-major.
"""

import sys

import numpy as np
import onnxruntime as ort

model, inp, shape, output, out = sys.argv[1:6]
x = np.fromfile(inp, dtype="<f4").reshape([int(d) for d in shape.split(",")])
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
(y,) = sess.run([output], {sess.get_inputs()[0].name: x})
np.ascontiguousarray(y, dtype="<f4").tofile(out)
