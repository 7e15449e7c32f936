"""Exports one of parm's MLPs (burnpack `.bpk`, as `parm train` / `parm train-parity` write
them) to the .npz the Triton model `mlp` reads (tests/triton/model.py, make_mlp.py).

burnpack (burn-pack 0.22): a 10-byte header (u32 magic 0x4255524E "NRUB" little-endian, u16
version, u32 metadata length), CBOR metadata `{"tensors": {name: {"dtype", "shape",
"data_offsets": [start, end]}}}`, then the data section from the next multiple of 256 bytes
(offsets relative to it); the same reader as tests/mlserver/parm_runtime.py. parm's MLP
tensors are already `layers.I.weight` [in, out] and `layers.I.bias` [out], so they are
copied under their own names.

Usage: python bpk_to_npz.py MODEL.bpk OUT.npz
"""

import struct
import sys

import cbor2
import numpy as np

HEADER_SIZE, MAGIC, ALIGN = 10, 0x4255524E, 256


def load_burnpack(path):
    with open(path, "rb") as f:
        blob = f.read()
    magic, _version, meta_len = struct.unpack_from("<IHI", blob, 0)
    if magic != MAGIC:
        raise SystemExit(f"{path}: not a burnpack file (magic {magic:#x})")
    meta = cbor2.loads(blob[HEADER_SIZE:HEADER_SIZE + meta_len])
    start = -(-(HEADER_SIZE + meta_len) // ALIGN) * ALIGN
    out = {}
    for name, t in meta["tensors"].items():
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(blob, dtype="<f4", count=(b - a) // 4, offset=start + a).reshape(t["shape"]).astype(np.float32)
    return out


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    tensors = {k: v for k, v in load_burnpack(sys.argv[1]).items() if k.startswith("layers.")}
    n = sum(1 for k in tensors if k.endswith(".weight"))
    if n == 0 or any(f"layers.{i}.{p}" not in tensors for i in range(n) for p in ("weight", "bias")):
        raise SystemExit(f"{sys.argv[1]}: not one of parm's MLPs (tensors {sorted(tensors)})")
    np.savez(sys.argv[2], **tensors)
    sizes = [tensors["layers.0.weight"].shape[0]] + [tensors[f"layers.{i}.weight"].shape[1] for i in range(n)]
    print(f"wrote {sys.argv[2]}: MLP {'-'.join(map(str, sizes))} from {sys.argv[1]}")


if __name__ == "__main__":
    main()
