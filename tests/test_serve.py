"""The inference service (serve/) through its HTTP API, in process (Starlette's TestClient runs the
lifespan): predictions against PyTorch on real digit images, every bad input → its 4xx, the Open
Inference Protocol, metrics, readiness, micro-batching, back-pressure, timeouts, the bearer key.

The models are tiny PP-LCNet x0.25 networks trained for a few steps with the library and exported
with ``compress export`` (about 10 s each, once per session)."""
from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve import ModelSpec, Settings, create_app
from serve.schemas import BatchResponse, PredictResponse

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

# --- fixtures shared with the other serve test modules (imported there) ---------------------


def _build(root: Path, name: str, data: str) -> Path:
    """Train a tiny model for a few steps and export it; cached for the whole session on disk."""
    onnx = root / f"{name}.onnx"
    if onnx.exists():
        return onnx
    from compress.cli import main

    root.mkdir(parents=True, exist_ok=True)
    art = root / f"{name}.safetensors"
    assert main(["train", "--model", "pplcnet_x0_25", "--data", data, "--epochs", "1", "--max-steps-per-epoch", "5",
                 "--batch-size", "16", "-o", str(art)]) == 0
    assert main(["export", str(art), "-o", str(onnx)]) == 0
    return onnx


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.getbasetemp() / "serve_models", "digits", "digits")


@pytest.fixture(scope="session")
def multilabel_onnx(tmp_path_factory, digits_onnx) -> Path:
    return _build(tmp_path_factory.getbasetemp() / "serve_models", "multilabel", "digits-multilabel")


def digit_test_images() -> tuple[list[Image.Image], np.ndarray]:
    """The digits test split as the 8-bit grey images ``compress eval`` preprocesses, in order."""
    from compress.data.datasets import seeded_split
    from compress.data.digits import SPLIT_FRACTIONS, _raw_digits, scan_to_image

    scans, targets = _raw_digits()
    _, _, test = seeded_split(len(scans), SPLIT_FRACTIONS, 0, strata=targets)
    return [scan_to_image(scans[i]) for i in test], targets[test]


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    """Files in every accepted format and the awkward modes the service must handle."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), "L"))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    gif_frames = [rgb.convert("P"), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    gif = io.BytesIO()
    gif_frames[0].save(gif, "GIF", save_all=True, append_images=gif_frames[1:])
    grey16 = Image.fromarray((rng.integers(0, 65536, (20, 30))).astype(np.uint16))
    return {
        "jpeg": encode(rgb, "JPEG", quality=90),
        "png-rgb": encode(rgb),
        "png-rgba": encode(rgba),
        "png-la": encode(rgba.convert("LA")),
        "png-palette-transparent": encode(pal, transparency=0),
        "png-grey16": encode(grey16),
        "png-1bit": encode(rgb.convert("1")),
        "webp": encode(rgb, "WEBP", lossless=True),
        "bmp": encode(rgb, "BMP"),
        "gif-animated": gif.getvalue(),
        "tiff": encode(rgb, "TIFF"),
        "tiff-cmyk": encode(rgb.convert("CMYK"), "TIFF"),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-exif-rotated": encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-grey": encode(rgb.convert("L"), "JPEG"),
    }


def wait_ready(client, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service did not become ready")


def make_client(*specs: tuple[str, Path], **settings):
    from fastapi.testclient import TestClient

    app = create_app(Settings(models=tuple(ModelSpec(n, p) for n, p in specs), **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(digits_onnx, multilabel_onnx):
    with make_client(("digits", digits_onnx), ("ml", multilabel_onnx), max_upload_bytes=64 * 1024,
                     max_pixels=512 * 512, max_files=4) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    images, _ = digit_test_images()
    return encode(images[0])


# --- predictions ------------------------------------------------------------------------------


def torch_logits(onnx: Path, images: list[Image.Image]) -> np.ndarray:
    """What ``compress eval`` computes: the PyTorch model on the training-side preprocessing."""
    import torch

    from compress.artifact import load_model
    from compress.data.preprocess import Preprocess

    model, meta = load_model(onnx.with_suffix(".safetensors"))
    prep = Preprocess(int(meta.input_size[-1]), tuple(meta.mean), tuple(meta.std), meta.interpolation)
    x = torch.from_numpy(np.stack([prep(im) for im in images]))
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_predict_matches_pytorch_top1_on_every_test_digit(client, digits_onnx):
    from compress.data import load_data
    from compress.onnx_meta import read_onnx_meta

    images, _ = digit_test_images()
    # the images are the ones compress eval scores: same preprocessing result as its data bundle
    meta = read_onnx_meta(digits_onnx)
    bundle = load_data("digits", image_size=32, seed=0, mean=meta.mean, std=meta.std)
    from compress.data.preprocess import Preprocess

    prep = Preprocess(32, tuple(meta.mean), tuple(meta.std), meta.interpolation)
    for i in (0, 1, len(images) - 1):
        assert np.array_equal(prep(images[i]), bundle.test[i][0].numpy())
    ref = torch_logits(digits_onnx, images)
    served = []
    for i in range(0, len(images), 4):
        files = [("files", (f"{j}.png", encode(images[j]), "image/png")) for j in range(i, min(i + 4, len(images)))]
        r = client.post("/predict/batch?k=1", files=files)
        assert r.status_code == 200, r.text
        served += [item["predictions"][0]["index"] for item in r.json()["results"]]
    for j in range(0, len(images), 45):  # single-image route too, raw body
        r = client.post("/predict", content=encode(images[j]), headers={"content-type": "image/png"})
        assert r.json()["predictions"][0]["index"] == served[j]
    top1 = ref.argmax(1)
    srt = np.sort(ref, axis=1)
    near_tie = (srt[:, -1] - srt[:, -2]) < 1e-4  # ORT and PyTorch differ by ~1e-6 in the logits
    mismatches = [j for j in range(len(images)) if served[j] != top1[j] and not near_tie[j]]
    assert len(served) == len(images) == 270
    assert mismatches == []
    assert near_tie.sum() <= 3


def test_predict_response_shape_timing_and_server_timing(client, digit_png):
    r = client.post("/predict", content=digit_png, headers={"content-type": "image/png"})
    assert r.status_code == 200
    body = PredictResponse.model_validate(r.json())
    assert body.model == "digits" and body.task == "multiclass" and len(body.predictions) == 5
    scores = [p.score for p in body.predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-9
    assert {p.label for p in body.predictions} <= set("0123456789")
    t = body.timing_ms
    assert t.total >= t.decode + t.preprocess + t.inference > 0
    header = dict(re.findall(r"(\w+);dur=([0-9.]+)", r.headers["server-timing"]))
    assert set(header) == {"decode", "preprocess", "queue", "inference", "total"}
    assert float(header["total"]) == pytest.approx(t.total)


def test_multipart_and_raw_body_agree_and_k_limits(client, digit_png):
    raw = client.post("/predict?k=3", content=digit_png, headers={"content-type": "application/octet-stream"})
    form = client.post("/predict?k=3", files={"file": ("x.png", digit_png, "image/png")})
    assert raw.json()["predictions"] == form.json()["predictions"]
    assert len(raw.json()["predictions"]) == 3
    assert len(client.post("/predict?k=50", content=digit_png).json()["predictions"]) == 10


def test_multilabel_returns_labels_above_threshold(client, digit_png):
    low = client.post("/predict?model=ml&threshold=0.01", content=digit_png).json()
    high = client.post("/predict?model=ml&threshold=0.99", content=digit_png).json()
    default = client.post("/predict?model=ml", content=digit_png).json()
    assert low["task"] == "multilabel" and default["threshold"] == 0.5
    assert all(p["score"] >= 0.01 for p in low["predictions"])
    assert all(p["score"] >= 0.99 for p in high["predictions"])
    assert all(p["score"] >= 0.5 for p in default["predictions"])
    assert len(low["predictions"]) >= len(default["predictions"]) >= len(high["predictions"])
    assert len(low["predictions"]) > len(high["predictions"])  # the threshold changes the answer


def test_batch_keeps_order(client):
    images, _ = digit_test_images()
    files = [("files", (f"{j}.png", encode(images[j]), "image/png")) for j in (5, 6, 7)]
    r = client.post("/predict/batch", files=files)
    body = BatchResponse.model_validate(r.json())
    assert [item.filename for item in body.results] == ["5.png", "6.png", "7.png"]
    for j, item in zip((5, 6, 7), body.results):
        single = client.post("/predict", content=encode(images[j])).json()["predictions"]
        assert item.predictions[0].index == single[0]["index"]
        assert item.predictions[0].score == pytest.approx(single[0]["score"], abs=1e-5)


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_every_accepted_format_and_mode_is_classified(client, name):
    r = client.post("/predict", content=odd_images()[name], headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text


# --- bad input: each gets its 4xx and a one-line JSON error; the server keeps serving ----------

def _truncated(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    return data[: len(data) * 2 // 3]


def _bomb() -> bytes:
    return encode(Image.new("L", (4000, 4000)), "PNG")  # 16 M pixels in a few KB


BAD_REQUESTS = {
    "empty body": (dict(content=b"", headers={"content-type": "image/png"}), 400),
    "text, not an image": (dict(content=b"hello world", headers={"content-type": "image/png"}), 415),
    "pdf": (dict(content=b"%PDF-1.4\n%...", headers={"content-type": "application/octet-stream"}), 415),
    "truncated png": (dict(content=_truncated("PNG"), headers={"content-type": "image/png"}), 400),
    "truncated jpeg": (dict(content=_truncated("JPEG"), headers={"content-type": "image/jpeg"}), 400),
    "decompression bomb": (dict(content=_bomb(), headers={"content-type": "image/png"}), 413),
    "body over the limit": (dict(content=b"\x89PNG" + b"0" * 70_000, headers={"content-type": "image/png"}), 413),
    "json content type": (dict(json={"image": "x"}), 415),
    "form without file": (dict(data={"file": "not a file"}, files={"other": ("a", b"b")}), 400),
    "unknown model": (dict(params={"model": "nope"}, content=b"x"), 404),
    "k = 0": (dict(params={"k": 0}, content=b"x"), 422),
    "k not a number": (dict(params={"k": "many"}, content=b"x"), 422),
    "threshold 1.5": (dict(params={"threshold": 1.5}, content=b"x"), 422),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_its_4xx(client, digit_png, case):
    kwargs, status = BAD_REQUESTS[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error
    assert client.post("/predict", content=digit_png).status_code == 200  # still serving


def test_chunked_body_over_the_limit_is_stopped(client):
    def chunks():
        for _ in range(100):
            yield b"0" * 1024

    r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_batch_bad_inputs(client, digit_png):
    too_many = [("files", (f"{i}.png", digit_png, "image/png")) for i in range(5)]
    assert client.post("/predict/batch", files=too_many).status_code == 400
    one_bad = [("files", ("a.png", digit_png, "image/png")), ("files", ("b.png", b"junk", "image/png"))]
    r = client.post("/predict/batch", files=one_bad)
    assert r.status_code == 415 and r.json()["error"].startswith("image 2:")
    assert client.post("/predict/batch", content=digit_png, headers={"content-type": "image/png"}).status_code == 415
    assert client.post("/predict/batch", data={"x": "y"}).status_code == 415  # url-encoded form
    assert client.post("/predict/batch", files={"other": ("a.png", digit_png)}).status_code == 400


def test_unknown_route_and_method_are_json_4xx(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()


# --- Open Inference Protocol v2 ---------------------------------------------------------------

def _onnx_logits(onnx: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _embedding_dim(client) -> int | None:
    return client.app.state.service.models["digits"].info.embedding_dim


def test_oip_metadata_health_and_ready(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    # every output the model has: the logits, then the embedding `compress export` adds
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
    assert meta["outputs"][1:] in ([], [{"name": "embedding", "datatype": "FP32", "shape": [-1, _embedding_dim(client)]}])
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/digits/versions/7").status_code == 404


def test_oip_infer_json_round_trips_a_tensor(client, digits_onnx):
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)  # under the 64 KiB limit
    req = {"id": "req-1", "inputs": [{"name": "input", "shape": [2, 3, 16, 16], "datatype": "FP32",
                                      "data": x.reshape(-1).tolist()}]}
    r = client.post("/v2/models/digits/infer", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "digits" and out["id"] == "req-1"
    # no outputs named in the request: the protocol answers with all of the model's outputs
    logits, *rest = out["outputs"]
    assert [o["name"] for o in rest] == (["embedding"] if _embedding_dim(client) else [])
    assert logits["name"] == "logits" and logits["datatype"] == "FP32" and logits["shape"] == [2, 10]
    got = np.asarray(logits["data"], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, _onnx_logits(digits_onnx, x), rtol=1e-5, atol=1e-5)
    nested = dict(req, inputs=[dict(req["inputs"][0], data=x.tolist())])  # nested lists are valid too
    assert client.post("/v2/models/digits/infer", json=nested).json()["outputs"][0]["data"] == logits["data"]


def test_oip_infer_binary_extension_round_trips(client, digits_onnx):
    x = np.random.default_rng(1).standard_normal((1, 3, 40, 40)).astype(np.float32)  # other H, W: dynamic axes
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 40, 40], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    r = client.post("/v2/models/digits/infer", content=head + x.tobytes(),
                    headers={"content-type": "application/octet-stream",
                             "inference-header-content-length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    (out,) = meta["outputs"]
    assert out["parameters"]["binary_data_size"] == 40 and "data" not in out
    got = np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, _onnx_logits(digits_onnx, x), rtol=1e-5, atol=1e-5)


def test_oip_classification_extension(client):
    x = np.zeros((1, 3, 32, 32), np.float32)
    req = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}],
           "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
    out = client.post("/v2/models/digits/infer", json=req).json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 3]
    scores = [float(s.split(":")[0]) for s in out["data"]]
    assert scores == sorted(scores, reverse=True)
    assert all(s.split(":")[2] == s.split(":")[1] for s in out["data"])  # label of index i is "i"


def _oip(shape, data=None, datatype="FP32", name="input", **extra):
    inp = {"name": name, "shape": shape, "datatype": datatype}
    if data is not None:
        inp["data"] = data
    inp.update(extra)
    return {"inputs": [inp]}


OIP_BAD = {
    "not json": (dict(content=b"{nope", headers={"content-type": "application/json"}), 400),
    "no inputs": (dict(json={"inputs": []}), 400),
    "wrong input name": (dict(json=_oip([1, 3, 8, 8], [0.0] * 192, name="x")), 400),
    "wrong datatype": (dict(json=_oip([1, 3, 8, 8], [0] * 192, datatype="INT64")), 400),
    "wrong rank": (dict(json=_oip([3, 8, 8], [0.0] * 192)), 400),
    "wrong channels": (dict(json=_oip([1, 1, 8, 8], [0.0] * 64)), 400),
    "zero dimension": (dict(json=_oip([0, 3, 8, 8], [])), 400),
    "too few values": (dict(json=_oip([1, 3, 8, 8], [0.0] * 10)), 400),
    "strings as data": (dict(json=_oip([1, 3, 1, 1], ["a", "b", "c"])), 400),
    "ragged data": (dict(json=_oip([1, 3, 1, 1], [[1.0], [2.0, 3.0]])), 400),
    "nan": (dict(content=json.dumps(_oip([1, 3, 1, 1], [float("nan"), 0.0, 0.0])).encode(),
                 headers={"content-type": "application/json"}), 400),
    "huge shape": (dict(json=_oip([1, 3, 100000, 100000], [0.0])), 400),
    "no data": (dict(json=_oip([1, 3, 8, 8])), 400),
    "bad header length": (dict(content=b"{}", headers={"inference-header-content-length": "99"}), 400),
    "binary size mismatch": (dict(content=json.dumps(_oip([1, 3, 8, 8], parameters={"binary_data_size": 10})).encode()
                                  + b"0" * 10, headers={"inference-header-content-length": str(len(json.dumps(
                                      _oip([1, 3, 8, 8], parameters={"binary_data_size": 10}))))}), 400),
    "unknown output": (dict(json=dict(_oip([1, 3, 8, 8], [0.0] * 192), outputs=[{"name": "probs"}])), 400),
}


@pytest.mark.parametrize("case", sorted(OIP_BAD))
def test_oip_bad_requests_get_400_with_error(client, case):
    kwargs, status = OIP_BAD[case]
    r = client.post("/v2/models/digits/infer", **kwargs)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}


def test_oip_input_too_small_for_the_network_is_400_not_500(client):
    r = client.post("/v2/models/digits/infer", json=_oip([1, 3, 1, 1], [0.0, 0.0, 0.0]))
    assert r.status_code in (200, 400), r.text  # ORT may run a 1x1 input (global pooling) or refuse it


# --- operations -------------------------------------------------------------------------------

def _counter(text: str, route: str, status: str) -> float:
    pattern = rf'serve_requests_total\{{method="POST",route="{re.escape(route)}",status="{status}"\}} ([0-9.e+]+)'
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def _sample(text: str, sample: str) -> float:
    """The value of one sample line (``name{labels}``) of a /metrics text, 0 when absent."""
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_requests_by_route_and_status(client, digit_png):
    before = client.get("/metrics").text
    for _ in range(3):
        client.post("/predict", content=digit_png)
    client.post("/predict", content=b"junk")
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert _counter(text, "/predict", "200") - _counter(before, "/predict", "200") == 3
    assert _counter(text, "/predict", "415") - _counter(before, "/predict", "415") == 1
    for family in ("serve_request_duration_seconds_bucket", 'serve_stage_duration_seconds_bucket{le="0.0005",'
                   'model="digits",stage="inference"}', "serve_batch_size_bucket", "serve_requests_in_flight",
                   "serve_queue_depth", "process_resident_memory_bytes"):
        assert family in text
    grew = lambda sample: _sample(text, sample) - _sample(before, sample)  # noqa: E731
    for stage in ("decode", "preprocess", "queue", "inference"):  # the junk failed before its stages ended
        assert grew(f'serve_stage_duration_seconds_count{{model="digits",stage="{stage}"}}') == 3, stage
    assert grew('serve_batch_size_count{model="digits"}') == 3
    assert grew('serve_inference_calls_total{model="digits",thread="inline"}') + \
        grew('serve_inference_calls_total{model="digits",thread="inference"}') == 3
    assert grew('serve_request_duration_seconds_count{route="/predict"}') == 4


def test_model_endpoint_shows_metadata_and_history(client, digits_onnx):
    m = client.get("/model").json()
    assert m["name"] == "digits" and m["default"] and m["labels"] == [str(i) for i in range(10)]
    assert m["input_size"] == [3, 32, 32] and m["arch"] == "pplcnet_x0_25" and m["task"] == "multiclass"
    assert [h["stage"] for h in m["history"]] == ["train"]
    assert len(m["mean"]) == 3 and m["interpolation"] == "bilinear" and m["has_metadata"]
    assert client.get("/model?model=ml").json()["task"] == "multilabel"
    assert [x["name"] for x in client.get("/models").json()["models"]] == ["digits", "ml"]
    assert client.get("/model?model=zzz").status_code == 404


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}",
                 "/v2/models/{name}/ready", "/v2/models/{name}/infer", "/healthz", "/readyz", "/model", "/metrics"):
        assert path in spec["paths"], path
    assert "InferenceRequest" in spec["components"]["schemas"]
    assert "PredictResponse" in spec["components"]["schemas"]


def test_readyz_waits_for_the_warm_up_inference(digits_onnx, monkeypatch):
    from serve.engine import Model

    release = threading.Event()
    original = Model.run

    def slow_first_run(self, batch):
        release.wait(10)
        return original(self, batch)

    monkeypatch.setattr(Model, "run", slow_first_run)
    with make_client(("digits", digits_onnx)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "models": {"digits": False}}
        assert c.get("/v2/health/ready").status_code == 503
        release.set()
        wait_ready(c)
        assert c.get("/readyz").json()["ready"] is True


def test_api_key_guards_everything_but_health(digits_onnx, digit_png):
    with make_client(("digits", digits_onnx), api_key="s3cret-key") as c:
        wait_ready(c)
        assert c.post("/predict", content=digit_png).status_code == 401
        assert c.post("/predict", content=digit_png, headers={"authorization": "Bearer wrong-key"}).status_code == 401
        r = c.post("/predict", content=digit_png, headers={"authorization": "Bearer s3cret-key"})
        assert r.status_code == 200
        assert c.get("/v2/models/digits").status_code == 401
        assert c.get("/metrics").status_code == 401
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200


# --- concurrency: micro-batching, back-pressure, timeouts -------------------------------------

async def _concurrent_posts(app, n: int, body: bytes, path: str = "/predict"):
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for _ in range(200):
                if (await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            return await asyncio.gather(*(c.post(path, content=body, headers={"content-type": "image/png"})
                                          for _ in range(n)))


def test_micro_batching_shares_one_ort_call(digits_onnx, digit_png):
    app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), max_batch=8, max_wait_ms=200))
    responses = asyncio.run(_concurrent_posts(app, 8, digit_png))
    assert all(r.status_code == 200 for r in responses)
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) >= 6, sizes  # the first may run alone: nobody else had arrived yet
    first = responses[0].json()["predictions"]
    assert all(r.json()["predictions"] == first for r in responses)  # same image, same answer in any row


def test_micro_batching_does_not_hold_a_lone_request(digits_onnx, digit_png):
    app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), max_batch=8, max_wait_ms=1000))
    (response,) = asyncio.run(_concurrent_posts(app, 1, digit_png))
    assert response.json()["batch_size"] == 1
    assert response.json()["timing_ms"]["total"] < 500  # not the 1000 ms max wait


def test_without_batching_each_request_runs_alone(digits_onnx, digit_png):
    app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),)))
    responses = asyncio.run(_concurrent_posts(app, 6, digit_png))
    assert [r.json()["batch_size"] for r in responses] == [1] * 6


@pytest.mark.parametrize("max_batch", [1, 4])
def test_full_queue_answers_503_with_retry_after(digits_onnx, digit_png, monkeypatch, max_batch):
    from serve.engine import Model

    original = Model.run

    def slow(self, batch):
        time.sleep(0.15)
        return original(self, batch)

    monkeypatch.setattr(Model, "run", slow)
    app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), max_queue=2, max_batch=max_batch,
                              max_wait_ms=0))
    responses = asyncio.run(_concurrent_posts(app, 12, digit_png))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 6 and set(codes) == {200, 503}, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]


def test_request_timeout_is_504_and_the_server_recovers(digits_onnx, digit_png, monkeypatch):
    from serve.engine import Model

    original = Model.run
    slow = {"on": False}

    def maybe_slow(self, batch):
        if slow["on"]:
            time.sleep(0.5)
        return original(self, batch)

    monkeypatch.setattr(Model, "run", maybe_slow)
    with make_client(("digits", digits_onnx), timeout_s=0.2) as c:
        wait_ready(c)
        slow["on"] = True
        r = c.post("/predict", content=digit_png)
        assert r.status_code == 504 and "timeout" in r.json()["error"]
        slow["on"] = False
        time.sleep(0.4)
        assert c.post("/predict", content=digit_png).status_code == 200


def test_settings_reject_impossible_values(digits_onnx):
    from serve.settings import SettingsError, parse_model_spec

    with pytest.raises(SettingsError):
        Settings(models=())
    with pytest.raises(SettingsError):
        Settings(models=(ModelSpec("a", digits_onnx), ModelSpec("a", digits_onnx)))
    with pytest.raises(SettingsError):
        Settings(models=(ModelSpec("a", digits_onnx),), threads=0)
    with pytest.raises(SettingsError):
        parse_model_spec("bad name=x.onnx")
    assert parse_model_spec("runs/x/model.onnx").name == "model"
    s = Settings(models=(ModelSpec("a", digits_onnx),), max_batch=4, api_key="12345678")
    assert Settings.from_json(s.to_json()) == s
    assert "12345678" not in repr(s)


def test_models_without_metadata_or_broken_files_fail_at_load(tmp_path, digits_onnx):
    from serve.engine import Model, ModelLoadError

    with pytest.raises(ModelLoadError, match="no such file"):
        Model("x", tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Model("x", tmp_path / "junk.onnx")
    import onnx

    proto = onnx.load(str(digits_onnx))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = Model("bare", tmp_path / "bare.onnx")  # third-party file: served with neutral defaults
    assert not bare.info.has_metadata and bare.info.labels == [str(i) for i in range(10)]
    assert bare.info.input_size == [3, 224, 224]
    proto.metadata_props.add(key="format", value=json.dumps("compress-onnx/1"))
    proto.metadata_props.add(key="labels", value=json.dumps(["a", "b"]))
    onnx.save(proto, str(tmp_path / "wrong.onnx"))
    with pytest.raises(ModelLoadError, match="2 labels for 10 outputs"):
        Model("wrong", tmp_path / "wrong.onnx")


def test_bytes_tensor_encoding_is_length_prefixed():
    from serve.routers.oip import _bytes_tensor

    assert _bytes_tensor(["ab", "c"]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
