"""Unmodified tritonclient (HTTP and gRPC, sync and async) against `parm serve`.

Run by tests/tritonclient/run.sh, which starts the cluster and sets PARM_HTTP_URL,
PARM_GRPC_URL and PARM_MODEL. The model is parm's Fashion-MNIST MLP: input "input"
[-1, 784] FP32, output "logits" [-1, 10] FP32.
"""

import asyncio
import os
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

HTTP = os.environ["PARM_HTTP_URL"]
GRPC = os.environ["PARM_GRPC_URL"]
MODEL = os.environ["PARM_MODEL"]
IN, OUT = "input", "logits"


def images(batch, seed=0):
    return np.random.default_rng(seed).random((batch, 784), dtype=np.float32)


@pytest.fixture(scope="module")
def http():
    c = httpclient.InferenceServerClient(HTTP, concurrency=4)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc():
    c = grpcclient.InferenceServerClient(GRPC)
    yield c
    c.close()


def http_infer(c, x, binary_in=True, binary_out=True, datatype="FP32", **kw):
    i = httpclient.InferInput(IN, list(x.shape), datatype)
    i.set_data_from_numpy(x, binary_data=binary_in)
    o = httpclient.InferRequestedOutput(OUT, binary_data=binary_out)
    return c.infer(MODEL, [i], outputs=[o], **kw)


def grpc_infer(c, x, datatype="FP32", **kw):
    i = grpcclient.InferInput(IN, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return c.infer(MODEL, [i], outputs=[grpcclient.InferRequestedOutput(OUT)], **kw)


def http_reconstructed(r):
    return r.get_response()["parameters"]["parm_reconstructed"]


def grpc_reconstructed(r):
    return r.get_response().parameters["parm_reconstructed"].bool_param


def same(a, b, exact_a, exact_b):
    """Exact answers agree; a reconstruction is approximate, so only its shape is checked."""
    assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all()
    if exact_a and exact_b:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- HTTP, sync


def test_http_health_and_metadata(http):
    assert http.is_server_live()
    assert http.is_server_ready()
    assert http.is_model_ready(MODEL)
    assert not http.is_model_ready("no-such-model")
    meta = http.get_server_metadata()
    assert meta["name"] == "parm" and "binary_tensor_data" in meta["extensions"]
    m = http.get_model_metadata(MODEL)
    assert m["inputs"][0] == {"name": IN, "datatype": "FP32", "shape": [-1, 784]}
    assert m["outputs"][0]["name"] == OUT and m["outputs"][0]["shape"] == [-1, 10]
    cfg = http.get_model_config(MODEL)
    assert cfg["input"][0]["dims"] == [784] and cfg["max_batch_size"] >= 1


def test_http_binary_and_json_tensors_agree(http):
    x = images(3)
    a = http_infer(http, x, binary_in=True, binary_out=True)
    b = http_infer(http, x, binary_in=False, binary_out=False)
    c = http_infer(http, x, binary_in=True, binary_out=False)
    for r in (a, b, c):
        assert r.as_numpy(OUT).shape == (3, 10)
    same(a.as_numpy(OUT), b.as_numpy(OUT), not http_reconstructed(a), not http_reconstructed(b))
    same(a.as_numpy(OUT), c.as_numpy(OUT), not http_reconstructed(a), not http_reconstructed(c))


def test_http_default_outputs_and_request_id(http):
    i = httpclient.InferInput(IN, [1, 784], "FP32")
    i.set_data_from_numpy(images(1))
    r = http.infer(MODEL, [i], request_id="req-7")
    assert r.get_response()["id"] == "req-7"
    assert r.as_numpy(OUT).shape == (1, 10)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.uint8, np.int32, np.int64])
def test_http_numeric_datatypes(http, grpc, dtype):
    x = (images(2) * 100).astype(dtype)
    name = {np.float64: "FP64", np.float16: "FP16", np.uint8: "UINT8", np.int32: "INT32", np.int64: "INT64"}[dtype]
    a = http_infer(http, x, datatype=name)
    b = http_infer(http, x.astype(np.float32))
    same(a.as_numpy(OUT), b.as_numpy(OUT), not http_reconstructed(a), not http_reconstructed(b))
    g = grpc_infer(grpc, x, datatype=name)
    same(a.as_numpy(OUT), g.as_numpy(OUT), not http_reconstructed(a), not grpc_reconstructed(g))


def test_http_gzip_request(http):
    x = images(2)
    a = http_infer(http, x, request_compression_algorithm="gzip")
    b = http_infer(http, x, request_compression_algorithm="deflate")
    same(a.as_numpy(OUT), b.as_numpy(OUT), not http_reconstructed(a), not http_reconstructed(b))


def test_http_async_infer_many(http):
    xs = [images(1, seed=s) for s in range(16)]
    reqs = []
    for x in xs:
        i = httpclient.InferInput(IN, [1, 784], "FP32")
        i.set_data_from_numpy(x)
        reqs.append(http.async_infer(MODEL, [i]))
    for r in reqs:
        assert r.get_result().as_numpy(OUT).shape == (1, 10)


def http_status(fn):
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.status(), e.value.message()


def test_http_errors(http):
    x = images(1)
    i = httpclient.InferInput(IN, [1, 784], "FP32")
    i.set_data_from_numpy(x)
    status, msg = http_status(lambda: http.infer("no-such-model", [i]))
    assert status == "404" and "no-such-model" in msg
    bad_name = httpclient.InferInput("pixels", [1, 784], "FP32")
    bad_name.set_data_from_numpy(x)
    assert http_status(lambda: http.infer(MODEL, [bad_name]))[0] == "400"
    bad_shape = httpclient.InferInput(IN, [1, 783], "FP32")
    bad_shape.set_data_from_numpy(x[:, :783])
    assert http_status(lambda: http.infer(MODEL, [bad_shape]))[0] == "400"
    boolean = httpclient.InferInput(IN, [1, 784], "BOOL")
    boolean.set_data_from_numpy(x > 0.5)
    status, msg = http_status(lambda: http.infer(MODEL, [boolean]))
    assert status == "400" and "BOOL" in msg
    # A 1 us deadline cannot be met: 504, never a late answer.
    assert http_status(lambda: http_infer(http, x, timeout=1))[0] == "504"


def test_http_statistics_move(http):
    before = http.get_inference_statistics(MODEL)["model_stats"][0]
    http_infer(http, images(4))
    after = http.get_inference_statistics(MODEL)["model_stats"][0]
    assert int(after["inference_count"]) == int(before["inference_count"]) + 4
    assert int(after["inference_stats"]["success"]["count"]) == int(before["inference_stats"]["success"]["count"]) + 1


# ---------------------------------------------------------------- gRPC, sync


def test_grpc_health_and_metadata(grpc):
    assert grpc.is_server_live()
    assert grpc.is_server_ready()
    assert grpc.is_model_ready(MODEL)
    meta = grpc.get_server_metadata(as_json=True)
    assert "binary_tensor_data" in meta["extensions"]
    m = grpc.get_model_metadata(MODEL, as_json=True)
    assert m["inputs"][0]["name"] == IN and [int(d) for d in m["inputs"][0]["shape"]] == [-1, 784]
    cfg = grpc.get_model_config(MODEL, as_json=True)["config"]
    assert [int(d) for d in cfg["input"][0]["dims"]] == [784]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32"
    stats = grpc.get_inference_statistics(MODEL, as_json=True)
    assert stats["model_stats"][0]["name"] == MODEL


def test_grpc_matches_http(http, grpc):
    x = images(5, seed=3)
    g = grpc_infer(grpc, x)
    h = http_infer(http, x)
    assert g.as_numpy(OUT).shape == (5, 10)
    same(g.as_numpy(OUT), h.as_numpy(OUT), not grpc_reconstructed(g), not http_reconstructed(h))


def test_grpc_callback_async_infer(grpc):
    done = queue.Queue()
    for s in range(8):
        i = grpcclient.InferInput(IN, [1, 784], "FP32")
        i.set_data_from_numpy(images(1, seed=s))
        grpc.async_infer(MODEL, [i], callback=lambda result, error: done.put((result, error)))
    for _ in range(8):
        result, error = done.get(timeout=30)
        assert error is None, error
        assert result.as_numpy(OUT).shape == (1, 10)


def grpc_status(fn):
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.status(), e.value.message()


def test_grpc_errors(grpc):
    x = images(1)
    i = grpcclient.InferInput(IN, [1, 784], "FP32")
    i.set_data_from_numpy(x)
    assert grpc_status(lambda: grpc.infer("no-such-model", [i]))[0] == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput(IN, [1, 783], "FP32")
    bad.set_data_from_numpy(x[:, :783])
    assert grpc_status(lambda: grpc.infer(MODEL, [bad]))[0] == "StatusCode.INVALID_ARGUMENT"
    boolean = grpcclient.InferInput(IN, [1, 784], "BOOL")
    boolean.set_data_from_numpy(x > 0.5)
    assert grpc_status(lambda: grpc.infer(MODEL, [boolean]))[0] == "StatusCode.INVALID_ARGUMENT"
    assert grpc_status(lambda: grpc_infer(grpc, x, timeout=1))[0] == "StatusCode.DEADLINE_EXCEEDED"


# ---------------------------------------------------------------- asyncio clients


def test_http_aio():
    async def run():
        async with httpaio.InferenceServerClient(HTTP) as c:
            assert await c.is_server_live()
            assert await c.is_model_ready(MODEL)
            assert (await c.get_model_metadata(MODEL))["name"] == MODEL
            inputs = []
            for s in range(6):
                i = httpaio.InferInput(IN, [1, 784], "FP32")
                i.set_data_from_numpy(images(1, seed=s))
                inputs.append(i)
            results = await asyncio.gather(*(c.infer(MODEL, [i]) for i in inputs))
            assert all(r.as_numpy(OUT).shape == (1, 10) for r in results)
            with pytest.raises(InferenceServerException):
                await c.infer("no-such-model", inputs[:1])

    asyncio.run(run())


def test_grpc_aio():
    async def run():
        c = grpcaio.InferenceServerClient(GRPC)
        try:
            assert await c.is_server_live()
            assert await c.is_server_ready()
            assert (await c.get_model_metadata(MODEL, as_json=True))["name"] == MODEL
            inputs = []
            for s in range(6):
                i = grpcaio.InferInput(IN, [1, 784], "FP32")
                i.set_data_from_numpy(images(1, seed=s))
                inputs.append(i)
            results = await asyncio.gather(*(c.infer(MODEL, [i]) for i in inputs))
            assert all(r.as_numpy(OUT).shape == (1, 10) for r in results)
            with pytest.raises(InferenceServerException):
                await c.infer("no-such-model", inputs[:1])
        finally:
            await c.close()

    asyncio.run(run())


# ---------------------------------------------------------------- measurement (opt-in)


@pytest.mark.skipif(not os.environ.get("PARM_MEASURE"), reason="set PARM_MEASURE=1 to measure")
def test_latency_added_by_the_frontend():
    """Sequential single-query p50 / p99 through the frontend vs straight to one deployed
    instance, same tritonclient gRPC client: the difference is what the frontend adds."""
    import time

    n, x = 2000, images(1)

    def measure(infer):
        for _ in range(200):
            infer()
        t = []
        for _ in range(n):
            s = time.perf_counter()
            infer()
            t.append(time.perf_counter() - s)
        t = np.array(t) * 1e6
        return np.percentile(t, 50), np.percentile(t, 99)

    direct = grpcclient.InferenceServerClient(os.environ["PARM_WORKER_GRPC_URL"])
    front = grpcclient.InferenceServerClient(GRPC)
    h = httpclient.InferenceServerClient(HTTP)
    di = grpcclient.InferInput(IN, [1, 784], "FP32")
    di.set_data_from_numpy(x)
    rows = {
        "worker gRPC (no frontend)": measure(lambda: direct.infer("deployed", [di])),
        "frontend gRPC": measure(lambda: front.infer(MODEL, [di])),
        "frontend HTTP binary": measure(lambda: http_infer(h, x)),
        "frontend HTTP JSON": measure(lambda: http_infer(h, x, binary_in=False, binary_out=False)),
    }
    print()
    for k, (p50, p99) in rows.items():
        print(f"{k:28s} p50 {p50:8.1f} us   p99 {p99:8.1f} us")
    print(f"frontend adds (gRPC p50): {rows['frontend gRPC'][0] - rows['worker gRPC (no frontend)'][0]:.1f} us")
