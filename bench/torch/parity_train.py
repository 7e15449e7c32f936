#!/usr/bin/env python3
"""PyTorch reference for parm's parity-training speed (issue 3, item 6; on a GPU, issue 18).

Runs ParM's published parity recipe, the same one `parm train-parity` runs by default:
addition encoder, parity MLP 784-200-ReLU-100-ReLU-10 with N(0, 0.01) linear weights, MSE
against the sum of the deployed model's logits, Adam lr 1e-3 weight decay 1e-5, 64 coding
groups per step for k = 2 (else 32), a fresh grouping each epoch. The targets are the deployed
model's train-set logits that `parm train-parity` caches (models/DATASET/cache/logits-*-train.f32),
so both trainers fit exactly the same data; images come from data/fashion-mnist (IDX), with
the last 5,000 training images held out as parm does. Prints one JSON line with steps/s.

`--device cuda` runs it on the GPU, the way one would in PyTorch: the training images and
targets are copied to the GPU once and each step's coding groups are gathered there (parm
builds each step's parity queries on the host and uploads them; that is part of what is
compared). Timing ends with a `torch.cuda.synchronize()`.

Not part of CI. Set-up: python3 -m venv V && V/bin/pip install torch numpy
Usage:  V/bin/python bench/torch/parity_train.py --logits models/fashion-mnist/cache/logits-...-train.f32
        [--k 2] [--epochs 5] [--threads 2] [--device cpu|cuda]
"""
import argparse, gzip, json, struct, time

import numpy as np
import torch


def idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, n, r, c = struct.unpack(">IIII", data[:16])
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, r * c).astype(np.float32) / 255.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logits", required=True)
    ap.add_argument("--images", default="data/fashion-mnist/train-images-idx3-ubyte.gz")
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    x = idx_images(a.images)[:-a.val]
    y = np.fromfile(a.logits, dtype="<f4").reshape(x.shape[0], -1)
    classes = y.shape[1]
    g = 64 if a.k == 2 else 32
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 200), torch.nn.ReLU(), torch.nn.Linear(200, 100), torch.nn.ReLU(), torch.nn.Linear(100, classes))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0.0, 0.01)
    model = model.to(dev)
    xs, ys = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = torch.nn.MSELoss()
    rng = np.random.default_rng(1)
    steps, start = 0, time.perf_counter()
    for _ in range(a.epochs):
        order = rng.permutation(x.shape[0])[: x.shape[0] // a.k * a.k].reshape(-1, a.k)
        for b in range(0, order.shape[0], g):
            idx = torch.from_numpy(order[b:b + g]).to(dev)
            px = xs[idx].sum(dim=1)
            py = ys[idx].sum(dim=1)
            opt.zero_grad()
            loss = loss_fn(model(px), py)
            loss.backward()
            opt.step()
            steps += 1
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    secs = time.perf_counter() - start
    print(json.dumps({"trainer": f"pytorch-{dev.type}", "torch": torch.__version__, "threads": a.threads, "k": a.k,
                      "epochs": a.epochs, "steps": steps, "seconds": round(secs, 3),
                      "steps_per_s": round(steps / secs, 1), "final_loss": round(loss.item(), 4)}))


if __name__ == "__main__":
    main()
