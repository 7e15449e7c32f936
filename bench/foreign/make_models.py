"""Makes the two foreign models of BENCHMARKS.md's "Protecting your own model" section.

1. An image CNN trained with PyTorch on Fashion-MNIST (Debian package dataset-fashion-mnist) and
   exported with torch.onnx.export: OUT/cnn.onnx, with the user's data as OUT/fmnist_x.npy
   (uint8 [N, 1, 28, 28], the 10,000 test images plus the first 20,000 training images, i.e.
   data the CNN was and was not trained on, as a user would have) and OUT/fmnist_y.npy.
2. A tabular scikit-learn model (MLPClassifier on the bundled digits data, 64 features)
   converted with skl2onnx (zipmap off): OUT/digits.onnx, OUT/digits_x.npy (float32 [1797, 64]),
   OUT/digits_y.npy.

Usage: python make_models.py OUT_DIR   (needs torch, onnx, scikit-learn, skl2onnx, numpy)
"""
import gzip
import os
import sys
import time

import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
FMNIST = "/usr/share/datasets/fashion-mnist"


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def torch_cnn():
    import torch
    from torch import nn

    torch.manual_seed(1)
    torch.set_num_threads(2)
    xtr = idx(f"{FMNIST}/train-images-idx3-ubyte.gz")
    ytr = idx(f"{FMNIST}/train-labels-idx1-ubyte.gz")
    xte = idx(f"{FMNIST}/t10k-images-idx3-ubyte.gz")
    yte = idx(f"{FMNIST}/t10k-labels-idx1-ubyte.gz")
    # Trained on training images 20,000..60,000; the user's data holds images it never saw.
    x = torch.tensor(xtr[20000:], dtype=torch.float32).unsqueeze(1) / 255.0
    y = torch.tensor(ytr[20000:], dtype=torch.long)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for epoch in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.tensor(xte, dtype=torch.float32).unsqueeze(1) / 255.0).argmax(1).numpy() == yte).mean()
    print(f"cnn: 3 epochs in {time.time() - start:.0f} s, test accuracy {acc:.4f}")
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), f"{out}/cnn.onnx", input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    user_x = np.concatenate([xte, xtr[:20000]])[:, None, :, :]
    np.save(f"{out}/fmnist_x.npy", user_x)
    np.save(f"{out}/fmnist_y.npy", np.concatenate([yte, ytr[:20000]]).astype(np.int64))


def sklearn_digits():
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    # Trained on the first 1,000 rows; the user's data is every row.
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=1).fit(x[:1000], y[:1000])
    print(f"digits: accuracy on the rows it did not see {clf.score(x[1000:], y[1000:]):.4f}")
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    with open(f"{out}/digits.onnx", "wb") as f:
        f.write(onx.SerializeToString())
    np.save(f"{out}/digits_x.npy", x)
    np.save(f"{out}/digits_y.npy", y.astype(np.int64))


if __name__ == "__main__":
    sklearn_digits()
    torch_cnn()
