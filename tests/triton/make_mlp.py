"""Writes the weights of a seeded random MLP as an .npz the Triton model `mlp` serves.

The .npz format (the same names and layout as parm's own MLPs, crates/parm-nn/src/mlp.rs, so
weights exported from parm load unchanged; tests/triton/bpk_to_npz.py converts parm's .bpk):
`layers.I.weight` float32 [in, out] and `layers.I.bias` float32 [out] for I = 0, 1, ...;
y = ReLU(... ReLU(x @ W0 + b0) ...) @ Wn + bn, raw logits out (no softmax).

Usage: python make_mlp.py OUT.npz [--sizes 784,64,10] [--seed 7]
"""

import argparse

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--sizes", default="784,64,10", help="layer widths, input first")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    rng = np.random.default_rng(a.seed)
    tensors = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        bound = 1.0 / np.sqrt(n_in)  # Kaiming-uniform-like, as burn initialises Linear
        tensors[f"layers.{i}.weight"] = rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32)
        tensors[f"layers.{i}.bias"] = rng.uniform(-bound, bound, (n_out,)).astype(np.float32)
    np.savez(a.out, **tensors)
    print(f"wrote {a.out}: MLP {'-'.join(map(str, sizes))}, seed {a.seed}")


if __name__ == "__main__":
    main()
