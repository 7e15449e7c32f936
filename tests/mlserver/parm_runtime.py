"""An MLServer custom runtime serving parm's MLP models (deployed or parity) with numpy.

parm saves weights as burnpack files (`NAME.bpk`, burn-pack 0.22): a 10-byte header (magic
"NRUB" = u32 0x4255524E little-endian, u16 version, u32 metadata length), CBOR metadata
`{"tensors": {name: {"dtype", "shape", "data_offsets": [start, end], ...}}, ...}`, then the
tensor data section, which starts at the next multiple of 256 bytes; offsets are relative to
it. An MLP's tensors are `layers.I.weight` ([in, out], burn's Linear computes x @ W + b) and
`layers.I.bias` ([out]); ReLU between layers, raw logits out (crates/parm-nn/src/mlp.rs).

model-settings.json: `"implementation": "parm_runtime.ParmMlp"`, `"parameters": {"uri": PATH.bpk}`.
"""

import struct

import cbor2
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

HEADER_SIZE = 10
MAGIC = 0x4255524E
ALIGN = 256


def load_burnpack(path):
    """{tensor name: float32 array} of a burnpack file."""
    with open(path, "rb") as f:
        blob = f.read()
    magic, _version, meta_len = struct.unpack_from("<IHI", blob, 0)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a burnpack file (magic {magic:#x})")
    meta = cbor2.loads(blob[HEADER_SIZE:HEADER_SIZE + meta_len])
    start = -(-(HEADER_SIZE + meta_len) // ALIGN) * ALIGN
    out = {}
    for name, t in meta["tensors"].items():
        if t["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        arr = np.frombuffer(blob, dtype="<f4", count=(b - a) // 4, offset=start + a)
        out[name] = arr.reshape(t["shape"]).astype(np.float32)
    return out


def mlp_layers(tensors):
    """[(W [in, out], b [out]), ...] in layer order."""
    n = sum(1 for k in tensors if k.startswith("layers.") and k.endswith(".weight"))
    if n == 0:
        raise ValueError("no layers.I.weight tensors: not one of parm's MLPs")
    return [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(n)]


def forward(layers, x):
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i + 1 < len(layers):
            np.maximum(h, 0.0, out=h)
    return h


class ParmMlp(MLModel):
    async def load(self) -> bool:
        self.layers = mlp_layers(load_burnpack(self.settings.parameters.uri))
        self.input_len = self.layers[0][0].shape[0]
        outputs = self.settings.outputs or []
        self.output_name = outputs[0].name if outputs else "logits"  # parm worker's name
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        x = x.reshape(-1, self.input_len)
        y = forward(self.layers, x).astype(np.float32, copy=False)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name=self.output_name, payload=y)],
        )
