"""Triton Inference Server as parm's deployed-model instances; run by tests/triton/run.sh, which
sets the environment:

  TRITON0_HTTP, TRITON0_GRPC, TRITON1_HTTP, TRITON1_GRPC   the two tritonservers (host:port)
  TRITON1_DELAY_FILE   writing N there makes triton 1's `mlp` sleep N ms per request
  TRITON1_PID          triton 1's process (stopped and continued; optional)
  PARM_HTTP_URL        the parm frontend (model `mlp`, deployed = the two tritons, k = 2)
  REFERENCE_GRPC       a parm worker serving the same weights as model `deployed` (empty: skip)
  PARITY_IS_MODEL      1 when the parity instance runs a parity model trained for these
                       weights (reconstructions are then checked for accuracy), else 0
  FASHION_MNIST_TEST   test images (idx gz); random inputs when absent
  SLOW_MS              the straggler's delay (ms); QUERIES: queries per phase
  LATENCY_JSON         where to write the latency table (optional)

Exits non-zero on the first failed check."""

import gzip
import http.client
import json
import os
import signal
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

ENV = os.environ
MODEL = "mlp"
SLOW_MS = float(ENV.get("SLOW_MS", "1000"))
QUERIES = int(ENV.get("QUERIES", "100"))
ATOL = 1e-4


def inputs(n):
    path = ENV.get("FASHION_MNIST_TEST", "")
    if path and os.path.exists(path):
        with gzip.open(path, "rb") as f:
            raw = f.read()
        pixels = np.frombuffer(raw, dtype=np.uint8, offset=16, count=n * 784)
        return pixels.reshape(n, 784).astype(np.float32) / 255.0
    return np.random.default_rng(3).random((n, 784), dtype=np.float32)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    print("ok:", msg, flush=True)


def grpc_infer(addr, model, x, output="output", input_name="input"):
    """x [B, 784] through `model` on an OIP gRPC server, in requests of at most 64 rows
    (Triton rejects a batch over the model's max_batch_size)."""
    client = grpcclient.InferenceServerClient(addr)
    parts = []
    for s in range(0, len(x), 64):
        inp = grpcclient.InferInput(input_name, list(x[s:s + 64].shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(x[s:s + 64]))
        parts.append(client.infer(model, [inp]).as_numpy(output))
    return np.concatenate(parts)


class Http:
    """One keep-alive HTTP/1.1 connection; infer() POSTs OIP JSON."""

    def __init__(self, addr, timeout=30.0):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def get(self, path):
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def infer(self, model, x):
        body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.reshape(-1).tolist()}]})
        self.conn.request("POST", f"/v2/models/{model}/infer", body=body, headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        resp = json.loads(r.read())
        if r.status != 200:
            return r.status, None, resp
        out = resp["outputs"][0]
        return r.status, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), resp.get("parameters", {})


def rows_reconstructed(params, rows):
    flags = params.get("parm_reconstructed_rows")
    if flags is None:
        return [bool(params.get("parm_reconstructed", False))] * rows
    return [bool(f) for f in flags]


def percentiles(samples_s):
    a = np.asarray(samples_s) * 1e3
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3)}


def set_delay(ms):
    with open(ENV["TRITON1_DELAY_FILE"], "w") as f:
        f.write(f"{int(ms)}\n")


def main():
    t0h, t0g, t1h, t1g = ENV["TRITON0_HTTP"], ENV["TRITON0_GRPC"], ENV["TRITON1_HTTP"], ENV["TRITON1_GRPC"]
    front = ENV["PARM_HTTP_URL"]
    x = inputs(QUERIES)

    # 1. Metadata: Triton's, and the frontend's (which parm learned from Triton over gRPC).
    status, meta = Http(t0h).get(f"/v2/models/{MODEL}")
    check(status == 200 and meta["inputs"][0]["shape"] == [-1, 784] and meta["outputs"][0]["shape"] == [-1, 10],
          f"Triton's metadata for {MODEL}: {meta['inputs']} -> {meta['outputs']}")
    status, fmeta = Http(front).get(f"/v2/models/{MODEL}")
    check(status == 200 and fmeta["inputs"][0]["name"] == "input" and fmeta["outputs"][0]["name"] == "output",
          f"parm's metadata for {MODEL}: {fmeta['inputs']} -> {fmeta['outputs']}")

    # 2. Triton's own answers (gRPC, unmodified tritonclient); both instances agree; the npz
    #    exported from parm's .bpk gives the parm worker's answers.
    #    One row per request, as parm sends single queries: numpy's matrix product may round a
    #    row differently in a larger batch (batches are compared within ATOL).
    ref = np.concatenate([grpc_infer(t0g, MODEL, x[i:i + 1]) for i in range(QUERIES)])
    check(ref.shape == (QUERIES, 10), f"Triton answers [{QUERIES}, 10] over gRPC, one row per request")
    batched = grpc_infer(t0g, MODEL, x)
    check(np.allclose(batched, ref, atol=ATOL), f"Triton's batched answers are within {ATOL} of its single ones "
                                                f"(max |diff| {np.abs(batched - ref).max():.1e})")
    check(all(np.array_equal(grpc_infer(t1g, MODEL, x[i:i + 1])[0], ref[i]) for i in range(8)),
          "both tritonservers give identical answers")
    if ENV.get("REFERENCE_GRPC"):
        worker = grpc_infer(ENV["REFERENCE_GRPC"], "deployed", x[:16], output="logits")
        err = float(np.abs(worker - ref[:16]).max())
        check(err < 1e-4, f"Triton (numpy, npz from parm's .bpk) equals the parm worker (burn) on 16 images: max |diff| {err:.2e}")

    # 3. Through parm: single queries (HTTP JSON), all answered; originals equal Triton's.
    client = Http(front)
    recon = 0
    for i in range(QUERIES):
        status, out, params = client.infer(MODEL, x[i:i + 1])
        assert status == 200, (i, status, params)
        if rows_reconstructed(params, 1)[0]:
            recon += 1
        else:
            assert np.array_equal(out[0], ref[i]), (i, out[0], ref[i])
    check(True, f"{QUERIES} single queries through parm answered (200); the {QUERIES - recon} originals equal "
                f"Triton's exactly; {recon} reconstructed (parity answered first)")
    status, out, params = client.infer(MODEL, x[:8])
    flags = rows_reconstructed(params, 8)
    check(status == 200 and out.shape == (8, 10) and all(np.allclose(out[j], ref[j], atol=ATOL) for j in range(8) if not flags[j]),
          f"a batch of 8 through parm: answered, originals equal Triton's ({sum(flags)} rows reconstructed)")

    # 4. Latency of one request at a time: Triton directly (HTTP JSON, gRPC) and through parm
    #    (HTTP JSON) in front of the two tritons.
    table = {}
    for name, fn in [
        ("triton_http_json", lambda c=Http(t0h): c.infer(MODEL, x[i:i + 1])),
        ("triton_grpc", lambda c=grpcclient.InferenceServerClient(t0g): c.infer(MODEL, [_inp(x[i:i + 1])])),
        ("parm_http_json", lambda c=Http(front): c.infer(MODEL, x[i:i + 1])),
    ]:
        samples = []
        for rep in range(2):  # the first round warms up
            samples = []
            for i in range(QUERIES):
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
        table[name] = percentiles(samples)
    print("latency, one request at a time (second round of", QUERIES, "queries):")
    for name, row in table.items():
        print(f"  {name:18s} p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  mean {row['mean_ms']:8.3f} ms")

    # 5. Triton 1 becomes a straggler: its `mlp` sleeps SLOW_MS per request. Every query is
    #    still answered, fast, the late ones reconstructed from the parity instance.
    set_delay(SLOW_MS)
    try:
        t = time.perf_counter()
        grpc_infer(t1g, MODEL, x[:1])
        took = (time.perf_counter() - t) * 1e3
        check(took >= SLOW_MS * 0.9, f"triton 1 is now a straggler: one direct request took {took:.0f} ms")
        results, lock = [], threading.Lock()

        def sender(rows):
            c = Http(front)
            for i in rows:
                t = time.perf_counter()
                status, out, params = c.infer(MODEL, x[i:i + 1])
                with lock:
                    results.append((i, status, out, params, time.perf_counter() - t))

        n = min(QUERIES, 40)
        threads = [threading.Thread(target=sender, args=(range(j, n, 4),)) for j in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        set_delay(0)
    check(len(results) == n and all(r[1] == 200 for r in results),
          f"straggler phase: all {n} queries (4 concurrent clients) answered 200")
    lat = percentiles([r[4] for r in results])
    table["parm_http_json_with_straggler"] = lat
    check(lat["max_ms"] < SLOW_MS / 2, f"none waited for the straggler: p50 {lat['p50_ms']} ms, max {lat['max_ms']} ms "
                                       f"(straggler {SLOW_MS:.0f} ms)")
    rec = [r for r in results if rows_reconstructed(r[3], 1)[0]]
    check(len(rec) >= 1, f"{len(rec)} of {n} answers marked parameters.parm_reconstructed = true")
    orig = [r for r in results if not rows_reconstructed(r[3], 1)[0]]
    check(all(np.array_equal(r[2][0], ref[r[0]]) for r in orig), f"the {len(orig)} originals equal Triton's")
    agree = np.mean([np.argmax(r[2][0]) == np.argmax(ref[r[0]]) for r in rec])
    print(f"reconstructions: top-1 agreement with Triton's own prediction {agree:.2f} ({len(rec)} reconstructed)")
    if ENV.get("PARITY_IS_MODEL") == "1":
        check(agree >= 0.3, f"reconstructions carry the prediction (top-1 agreement {agree:.2f} >= 0.3; chance 0.1)")

    # 6. Triton 1 stalls (SIGSTOP: connections open, nothing answered): still every query
    #    answered, without waiting for it.
    if ENV.get("TRITON1_PID"):
        pid = int(ENV["TRITON1_PID"])
        os.kill(pid, signal.SIGSTOP)
        try:
            c, stalled = Http(front), []
            for i in range(20):
                t = time.perf_counter()
                status, out, params = c.infer(MODEL, x[i:i + 1])
                stalled.append((status, rows_reconstructed(params, 1)[0] if status == 200 else False, time.perf_counter() - t))
        finally:
            os.kill(pid, signal.SIGCONT)
        lat = percentiles([r[2] for r in stalled])
        table["parm_http_json_with_stalled_instance"] = lat
        check(all(r[0] == 200 for r in stalled) and lat["max_ms"] < 1000,
              f"triton 1 stopped (SIGSTOP): all 20 queries answered, max {lat['max_ms']} ms, "
              f"{sum(r[1] for r in stalled)} reconstructed")
    if ENV.get("LATENCY_JSON"):
        with open(ENV["LATENCY_JSON"], "w") as f:
            json.dump(table, f, indent=1)


def _inp(x):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


if __name__ == "__main__":
    main()
