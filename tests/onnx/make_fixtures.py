#!/usr/bin/env python3
"""ONNX fixtures for parm's tests, made without torch: `make_fixtures.py OUT_DIR`.

Writes into OUT_DIR (created if missing; files already there are rewritten):
  mlp.onnx      Gemm/Relu MLP 784-64-10, seeded random weights, input "input" [N, 784],
                output "logits" [N, 10] (N: symbolic batch).
  cnn.onnx      Conv(1->4, 3x3, pad 1)/Relu/MaxPool 2x2/Flatten/Gemm(784->10) on
                "input" [N, 1, 28, 28] -> "logits" [N, 10].
  sklearn.onnx  scikit-learn LogisticRegression on sklearn's bundled digits (8x8 images,
                values 0..16), converted by skl2onnx with zipmap disabled: input
                "float_input" [N, 64] float32, outputs "label" [N] int64 and
                "probabilities" [N, 10] float32.
  digits_x.npy  float32 [1797, 64], the digits data set's images.
  digits_y.npy  int64 [1797], its labels.

Every graph is checked with onnx.checker and run once through onnxruntime, so a broken
fixture fails here, not in Rust. (Graphs that must fail to load are made by the Rust tests.)
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]


def init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def save(model, out_dir, name):
    model.ir_version = 8  # readable by every onnxruntime and tract release in use
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out_dir, name))


def float_io(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def mlp(rng):
    w1, b1 = rng.normal(0, 0.05, (784, 64)), rng.normal(0, 0.05, 64)
    w2, b2 = rng.normal(0, 0.2, (64, 10)), rng.normal(0, 0.05, 10)
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [float_io("input", ["N", 784])], [float_io("logits", ["N", 10])],
        [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2)],
    )
    return helper.make_model(graph, opset_imports=OPSET, producer_name="parm-fixtures")


def cnn(rng):
    conv_w, conv_b = rng.normal(0, 0.3, (4, 1, 3, 3)), rng.normal(0, 0.05, 4)
    fc_w, fc_b = rng.normal(0, 0.05, (784, 10)), rng.normal(0, 0.05, 10)
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [float_io("input", ["N", 1, 28, 28])], [float_io("logits", ["N", 10])],
        [init("conv_w", conv_w), init("conv_b", conv_b), init("fc_w", fc_w), init("fc_b", fc_b)],
    )
    return helper.make_model(graph, opset_imports=OPSET, producer_name="parm-fixtures")


def sklearn_model(out_dir):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(x, y)
    model = convert_sklearn(
        clf,
        initial_types=[("float_input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 13, "ai.onnx.ml": 1},
    )
    np.save(os.path.join(out_dir, "digits_x.npy"), x)
    np.save(os.path.join(out_dir, "digits_y.npy"), y.astype(np.int64))
    return model


def smoke(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(15)
    save(mlp(rng), out_dir, "mlp.onnx")
    save(cnn(rng), out_dir, "cnn.onnx")
    save(sklearn_model(out_dir), out_dir, "sklearn.onnx")
    p = lambda n: os.path.join(out_dir, n)  # noqa: E731
    smoke(p("mlp.onnx"), {"input": np.zeros((3, 784), np.float32)})
    smoke(p("cnn.onnx"), {"input": np.zeros((3, 1, 28, 28), np.float32)})
    smoke(p("sklearn.onnx"), {"float_input": np.load(p("digits_x.npy"))[:3]})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixtures.py OUT_DIR")
    main(sys.argv[1])
