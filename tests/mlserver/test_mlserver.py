"""MLServer as parm's deployed-model instances; run by tests/mlserver/run.sh (which sets the
environment: PARM_HTTP_URL, PARM_GRPC_URL, MLSERVER0_GRPC, MLSERVER1_GRPC, PARITY_GRPC,
MLSERVER0_PID, FASHION_MNIST_TEST). Exits non-zero on the first failed check."""

import gzip
import json
import os
import signal
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

ENV = os.environ
MODEL = "fashion-mnist"
ATOL = 1e-4  # numpy (MLServer) vs burn (parm worker) float32 arithmetic


def test_images(n):
    with gzip.open(ENV["FASHION_MNIST_TEST"], "rb") as f:
        raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    assert count >= n, count
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16, count=n * 784)
    return pixels.reshape(n, 784).astype(np.float32) / 255.0


def oip_infer(url, model, x):
    """Runs `model` on x [B, 784] on an OIP gRPC server with unmodified tritonclient."""
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("logits")


def parm_http(x, timeout=10.0, url_env="PARM_HTTP_URL"):
    """POSTs x [B, 784] to the parm frontend as JSON; returns (outputs [B, 10], parameters)."""
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}
    req = urllib.request.Request(f"http://{ENV[url_env]}/v2/models/{MODEL}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        resp = json.load(r)
    out = resp["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), resp.get("parameters", {})


def row_flags(params, rows):
    flags = params.get("parm_reconstructed_rows")
    if flags is None:
        return [bool(params.get("parm_reconstructed", False))] * rows
    return [bool(f) for f in flags]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    print("ok:", msg)


def main():
    x = test_images(40)
    m0, m1, parity = ENV["MLSERVER0_GRPC"], ENV["MLSERVER1_GRPC"], ENV["PARITY_GRPC"]

    # MLServer's own answers, and the same model on both MLServer instances.
    ref = oip_infer(m0, "deployed", x)
    check(ref.shape == (40, 10), f"MLServer answers [40, 10] (got {ref.shape})")
    check(np.allclose(oip_infer(m1, "deployed", x[:8]), ref[:8], atol=ATOL), "both MLServer instances agree")
    f0 = oip_infer(m1, "deployed", np.zeros((1, 784), np.float32))[0]

    # Through parm: single queries and a batch, HTTP and gRPC; all originals, equal to MLServer's.
    for i in range(16):
        out, params = parm_http(x[i:i + 1])
        assert np.allclose(out[0], ref[i], atol=ATOL), (i, out[0], ref[i])
        assert not row_flags(params, 1)[0], (i, params)
    check(True, "16 single queries through parm (HTTP) equal MLServer's outputs, none reconstructed")
    out, params = parm_http(x[:8])
    check(out.shape == (8, 10) and np.allclose(out, ref[:8], atol=ATOL) and not any(row_flags(params, 8)),
          "a batch of 8 through parm (HTTP) equals MLServer's outputs, no row reconstructed")
    out, params = parm_http(x[:8], url_env="PARM_BATCH_HTTP_URL")
    check(np.allclose(out, ref[:8], atol=ATOL) and not any(row_flags(params, 8)),
          "a batch of 8 through the batch-coding frontend equals MLServer's outputs")
    out = oip_infer(ENV["PARM_GRPC_URL"], MODEL, x[8:16])
    check(np.allclose(out, ref[8:16], atol=ATOL), "a batch of 8 through parm's gRPC endpoint (tritonclient) equals MLServer's outputs")

    # MLServer instance 0 stalled: its queries come back as reconstructions from the parity
    # model. Queries go one at a time; a coding group (k = 2) holds one or two of them (the
    # second joins when the first was answered within the group timeout), a one-query group is
    # padded with a zero query. Reconstruction of X in group {X, Y}: Fp(X + Y) - F(Y); in
    # group {X}: Fp(X) - F(0). Both are recomputed here from the parity worker and MLServer.
    pid = int(ENV["MLSERVER0_PID"])
    os.kill(pid, signal.SIGSTOP)
    try:
        groups, recon, took = {}, [], []
        for i in range(16, 32):
            t = time.monotonic()
            out, params = parm_http(x[i:i + 1])
            took.append(time.monotonic() - t)
            groups.setdefault(params["parm_coding_groups"][0], []).append(i)
            if row_flags(params, 1)[0]:
                recon.append((i, params["parm_coding_groups"][0], out[0]))
            else:
                assert np.allclose(out[0], ref[i], atol=ATOL), (i, out[0], ref[i])
        for i, g, got in recon:
            others = [j for j in groups[g] if j != i]
            assert len(others) <= 1, groups[g]
            fp = oip_infer(parity, "parity-k2-addition", x[[i] + others].sum(axis=0, keepdims=True))[0]
            want = fp - (ref[others[0]] if others else f0)
            assert np.allclose(got, want, atol=1e-3), (i, groups[g], got, want)
        check(len(recon) >= 4, f"MLServer 0 stalled: {len(recon)}/16 answers reconstructed, each = Fp(P) - (F of the rest) "
              f"from the parity worker and MLServer ({len(groups)} coding groups)")
        check(max(took) < 2.0, f"every answer within 2 s of sending (slowest {max(took) * 1000:.0f} ms; decode grace 0.5 s, instance timeout 3 s)")

        # Batches of 4 through the batch-coding frontend, one at a time: a batch goes to one
        # MLServer as one request; a group holds one or two batches (the second joins when
        # the first was answered within the group timeout). Reconstruction of row i of batch X
        # in group {X, Y}: Fp(X_i + Y_i) - F(Y_i); in group {X}: Fp(X_i) - F(0).
        groups, recon = {}, []
        for b in range(6):
            xb = x[4 * b:4 * b + 4]
            out, params = parm_http(xb, url_env="PARM_BATCH_HTTP_URL")
            flags = row_flags(params, 4)
            assert len(set(flags)) == 1, flags  # one request per batch: all rows alike
            groups.setdefault(params["parm_coding_groups"][0], []).append(b)
            if flags[0]:
                recon.append((b, params["parm_coding_groups"][0], out))
            else:
                assert np.allclose(out, ref[4 * b:4 * b + 4], atol=ATOL), (b, out)
        for b, g, got in recon:
            others = [o for o in groups[g] if o != b]
            assert len(others) <= 1, groups[g]
            p = x[4 * b:4 * b + 4] + (x[4 * others[0]:4 * others[0] + 4] if others else 0)
            want = oip_infer(parity, "parity-k2-addition", p) - (ref[4 * others[0]:4 * others[0] + 4] if others else f0)
            assert np.allclose(got, want, atol=1e-3), (b, groups[g], got, want)
        check(len(recon) >= 2, f"MLServer 0 stalled, batch coding: {len(recon)}/6 batches of 4 reconstructed row by row "
              f"from one batched parity request each ({len(groups)} groups)")
    finally:
        os.kill(pid, signal.SIGCONT)

    # MLServer instance 0 killed: every query still answered (retried on instance 1 or
    # reconstructed), and the originals equal MLServer's outputs.
    os.kill(pid, signal.SIGKILL)
    answered = 0
    for i in range(32, 40):
        out, params = parm_http(x[i:i + 1])
        if not row_flags(params, 1)[0]:
            assert np.allclose(out[0], ref[i], atol=ATOL), (i, out[0], ref[i])
        answered += 1
    check(answered == 8, "MLServer 0 killed: 8/8 queries answered")
    print("mlserver suite: all checks passed")


if __name__ == "__main__":
    main()
