"""The PyTorch CNN of make_models.py (conv 5x5 1->16, pad 2, ReLU, max-pool 2; conv 5x5 16->32,
pad 2, ReLU, max-pool 2; flatten; dense 1568->128, ReLU; dense 128->10) written node for node
as torch.onnx.export writes it (opset 17, dynamic batch axis "N", input "image", output
"logits"), with seeded random weights and no torch: for latency measurements, which do not
depend on the weights, on a machine without PyTorch.

Usage: python cnn_graph.py OUT.onnx   (needs onnx, numpy)
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(1)


def weight(name, *shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


conv = dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1], dilations=[1, 1], group=1)
pool = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0, dilations=[1, 1])
node = helper.make_node
nodes = [
    node("Conv", ["image", "c1.w", "c1.b"], ["c1"], **conv),
    node("Relu", ["c1"], ["r1"]),
    node("MaxPool", ["r1"], ["p1"], **pool),
    node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], **conv),
    node("Relu", ["c2"], ["r2"]),
    node("MaxPool", ["r2"], ["p2"], **pool),
    node("Flatten", ["p2"], ["f"], axis=1),
    node("Gemm", ["f", "d1.w", "d1.b"], ["d1"], alpha=1.0, beta=1.0, transB=1),
    node("Relu", ["d1"], ["r3"]),
    node("Gemm", ["r3", "d2.w", "d2.b"], ["logits"], alpha=1.0, beta=1.0, transB=1),
]
weights = [weight("c1.w", 16, 1, 5, 5), weight("c1.b", 16), weight("c2.w", 32, 16, 5, 5), weight("c2.b", 32),
           weight("d1.w", 128, 1568), weight("d1.b", 128), weight("d2.w", 10, 128), weight("d2.b", 10)]
graph = helper.make_graph(nodes, "main_graph", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
