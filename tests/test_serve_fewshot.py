"""Few-shot classes without retraining (serve/prototypes.py, serve/routers/classes.py): enrol
classes from real digit images through the HTTP API of a model exported with ``compress export``
(which adds the ``embedding`` output), classify held-out images by the nearest prototype, every
refusal with its 4xx, the bearer key, persistence across app instances and a crash mid-write.

The model is a PP-LCNet x0.25 trained for 8 epochs on digits (about 35 s, once per session, 96–98%
top-1): a 5-step model's embeddings separate the digits too poorly to test that the right class
wins, and so did 3 epochs on an Intel Xeon (38.5% top-1, 49 of 66 held-out images), where the
same seed had been enough on an AMD EPYC."""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from serve import ModelSpec, Settings, create_app
from serve.schemas import BatchResponse, PredictResponse
from tests.test_serve import digit_test_images, digits_onnx, encode, make_client, wait_ready  # noqa: F401

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

ENROLLED = (0, 1, 7)  # digits enrolled as the classes "zero", "one", "seven"
NAMES = {0: "zero", 1: "one", 7: "seven"}
SHOTS = 5


@pytest.fixture(scope="session")
def fewshot_onnx(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "fewshot_model"
    onnx = root / "digits.onnx"
    if not onnx.exists():
        from compress.cli import main

        root.mkdir(parents=True, exist_ok=True)
        art = root / "digits.safetensors"
        assert main(["train", "--model", "pplcnet_x0_25", "--data", "digits", "--epochs", "8", "--batch-size", "32",
                     "-o", str(art)]) == 0
        assert main(["export", str(art), "-o", str(onnx)]) == 0
    import onnxruntime as ort

    names = [o.name for o in ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_outputs()]
    assert names == ["logits", "embedding"], f"compress export wrote outputs {names}"
    return onnx


@pytest.fixture(scope="module")
def no_embedding_onnx(digits_onnx, tmp_path_factory) -> Path:  # noqa: F811
    """The digits model with its embedding output (and the metadata naming it) removed."""
    import onnx

    proto = onnx.load(str(digits_onnx))
    keep = [o for o in proto.graph.output if o.name != "embedding"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    props = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("embedding")]
    del proto.metadata_props[:]
    for k, v in props:
        proto.metadata_props.add(key=k, value=v)
    path = tmp_path_factory.mktemp("noemb") / "plain.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def digits():
    """(support images per enrolled digit: the first SHOTS of its test images; held-out (image, digit))."""
    images, targets = digit_test_images()
    support, held_out = {}, []
    for d in ENROLLED:
        idx = np.flatnonzero(targets == d)
        support[d] = [images[i] for i in idx[:SHOTS]]
        held_out += [(images[i], d) for i in idx[SHOTS:]]
    return support, held_out


def _files(images) -> list:
    return [("files", (f"{i}.png", encode(im), "image/png")) for i, im in enumerate(images)]


def enrol(client, name: str, images, *, query: str = "", headers=None):
    return client.post(f"/v1/classes{query}", data={"name": name}, files=_files(images), headers=headers)


def enrol_all(client, support) -> None:
    for d in ENROLLED:
        r = enrol(client, NAMES[d], support[d])
        assert r.status_code == 201, r.text


@pytest.fixture()
def client(fewshot_onnx, tmp_path):
    with make_client(("digits", fewshot_onnx), classes_dir=tmp_path / "classes", max_files=8,
                     max_pixels=512 * 512, max_upload_bytes=256 * 1024) as c:
        wait_ready(c)
        yield c


def reference_embeddings(onnx: Path, images) -> np.ndarray:
    """The embedding output of ONNX Runtime on the training-side preprocessing (not serve/'s)."""
    import onnxruntime as ort

    from compress.artifact import load_model  # noqa: F401  (the metadata as compress reads it)
    from compress.data.preprocess import Preprocess

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    meta = {p: json.loads(v) for p, v in sess.get_modelmeta().custom_metadata_map.items()}
    prep = Preprocess(meta["input_size"][-1], tuple(meta["mean"]), tuple(meta["std"]), meta["interpolation"])
    x = np.stack([prep(im) for im in images])
    return sess.run(["embedding"], {"input": x})[0].astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- enrolment and prototype predictions ------------------------------------------------------


def test_prototype_predict_picks_the_enrolled_class_of_held_out_images(client, fewshot_onnx, digits):
    support, held_out = digits
    enrol_all(client, support)
    listed = client.get("/v1/classes").json()
    assert listed["model"] == "digits" and listed["embedding_dim"] > 0
    assert listed["classes"] == [{"name": NAMES[d], "shots": SHOTS} for d in ENROLLED]

    # the reference: prototypes = unit(mean(unit(e))) from ONNX Runtime on the training-side preprocessing
    protos = np.stack([_unit(_unit(reference_embeddings(fewshot_onnx, support[d])).mean(0)) for d in ENROLLED])
    queries = _unit(reference_embeddings(fewshot_onnx, [im for im, _ in held_out]))
    want = queries @ protos.T  # (n, 3) cosine similarities

    served = []
    for i in range(0, len(held_out), 8):
        chunk = held_out[i:i + 8]
        r = client.post("/predict/batch?mode=prototype", files=_files([im for im, _ in chunk]))
        assert r.status_code == 200, r.text
        body = BatchResponse.model_validate(r.json())
        assert body.mode == "prototype" and body.task == "multiclass"
        served += [item.predictions for item in body.results]
    assert len(served) == len(held_out) > 50
    for preds, row in zip(served, want):
        assert [p.label for p in preds] == [NAMES[ENROLLED[j]] for j in np.argsort(-row, kind="stable")]
        np.testing.assert_allclose([p.score for p in preds], np.sort(row)[::-1], atol=2e-5)
        assert [p.index for p in preds] == [[NAMES[d] for d in ENROLLED].index(p.label) for p in preds]
    correct = [preds[0].label == NAMES[d] for preds, (_, d) in zip(served, held_out)]
    assert np.mean(correct) >= 0.85, f"{sum(correct)}/{len(correct)} held-out images got their class"

    # one image through /predict: the same answer in the /predict shape, timing and Server-Timing included
    image, digit = next((im, d) for (im, d), ok in zip(held_out, correct) if ok and d == 7)
    r = client.post("/predict?mode=prototype&k=2", content=encode(image), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = PredictResponse.model_validate(r.json())
    assert body.mode == "prototype" and body.predictions[0].label == "seven" and len(body.predictions) == 2
    assert -1.0 <= body.predictions[1].score <= body.predictions[0].score <= 1.0
    t = body.timing_ms
    assert t.total >= t.decode + t.preprocess + t.inference > 0
    assert set(dict(re.findall(r"(\w+);dur=([0-9.]+)", r.headers["server-timing"]))) == \
        {"decode", "preprocess", "queue", "inference", "total"}


def test_default_predict_is_unchanged_by_enrolled_classes(client, digits):
    support, held_out = digits
    png = encode(held_out[0][0])
    before = client.post("/predict", content=png, headers={"content-type": "image/png"}).json()
    enrol_all(client, support)
    for query in ("", "?mode=logits"):
        after = client.post(f"/predict{query}", content=png, headers={"content-type": "image/png"}).json()
        assert "mode" not in after and after["predictions"] == before["predictions"]
        assert {p["label"] for p in after["predictions"]} <= set("0123456789")
    batch = client.post("/predict/batch", files=_files([held_out[0][0]])).json()
    assert batch["results"][0]["predictions"] == before["predictions"] and "mode" not in batch


def test_replace_and_delete(client, digits):
    support, _ = digits
    assert enrol(client, "seven", support[7][:2]).status_code == 201
    r = enrol(client, "seven", support[7], query="?replace=true")
    assert r.status_code == 201 and r.json()["replaced"] is True and r.json()["shots"] == SHOTS
    assert client.get("/v1/classes").json()["classes"] == [{"name": "seven", "shots": SHOTS}]
    assert enrol(client, "a/b c", support[1][:1]).status_code == 201  # any printable name, "/" too
    r = client.delete("/v1/classes/a%2Fb%20c")
    assert r.status_code == 200 and r.json() == {"model": "digits", "deleted": "a/b c", "classes": 1}
    assert client.delete("/v1/classes/seven").json()["classes"] == 0
    assert client.get("/v1/classes").json()["classes"] == []
    r = client.post("/predict?mode=prototype", content=encode(support[7][0]), headers={"content-type": "image/png"})
    assert r.status_code == 409 and "POST /v1/classes" in r.json()["error"]


# --- refusals ---------------------------------------------------------------------------------

def _png(digits) -> bytes:
    return encode(digits[0][7][0])


BAD_ENROLMENTS = {
    # case: (form fields, files, query, status, words in the error)
    "empty name": ({"name": ""}, 1, "", 400, "empty"),
    "whitespace name": ({"name": " \t "}, 1, "", 400, "empty"),
    "no name field": ({}, 1, "", 400, "'name'"),
    "two names": ({"name": ["a", "b"]}, 1, "", 400, "'name'"),
    "name too long": ({"name": "x" * 101}, 1, "", 400, "limit is 100"),
    "newline in name": ({"name": "a\nb"}, 1, "", 400, "U+000A"),
    "nul in name": ({"name": "a\x00b"}, 1, "", 400, "U+0000"),
    "bidi override in name": ({"name": "a\u202eb"}, 1, "", 400, "U+202E"),
    "leading space": ({"name": " seven"}, 1, "", 400, "whitespace"),
    "zero images": ({"name": "seven"}, 0, "", 400, "no image"),
    "unknown model": ({"name": "seven"}, 1, "?model=nope", 404, "no model"),
    "bad replace": ({"name": "seven"}, 1, "?replace=maybe", 422, "replace"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENROLMENTS))
def test_bad_enrolment_gets_its_4xx_and_changes_nothing(client, digits, case):
    fields, n_files, query, status, words = BAD_ENROLMENTS[case]
    files = [("files", (f"{i}.png", _png(digits), "image/png")) for i in range(n_files)]
    if not files:  # still a multipart form, with a file but not in 'files'
        files = [("notes", ("a.txt", b"seven", "text/plain"))]
    r = client.post(f"/v1/classes{query}", data=fields, files=files)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]
    assert client.get("/v1/classes").json()["classes"] == []


def test_bad_images_and_bodies_get_the_usual_4xx(client, digits):
    png = _png(digits)
    cases = [
        ([("files", ("a.png", b"junk", "image/png"))], 415),  # not an image
        ([("files", ("a.png", png, "image/png")), ("files", ("b.png", png[:60], "image/png"))], 400),  # truncated
        ([("files", ("a.png", encode(digits[0][7][0].resize((600, 600))), "image/png"))], 413),  # > max_pixels
        ([("files", (f"{i}.png", png, "image/png")) for i in range(9)], 400),  # > max_files
        ([("files", ("a.png", png + b"\0" * 300_000, "image/png"))], 413),  # > max_upload_bytes
    ]
    for files, status in cases:
        r = client.post("/v1/classes", data={"name": "seven"}, files=files)
        assert r.status_code == status, (status, r.text)
        assert set(r.json()) == {"error"}
    r = client.post("/v1/classes", content=png, headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]
    assert client.get("/v1/classes").json()["classes"] == []
    assert client.get("/healthz").status_code == 200


def test_duplicate_name_is_409_unless_replace(client, digits):
    support, _ = digits

    def score() -> float:
        r = client.post("/predict?mode=prototype", content=encode(support[7][0]), headers={"content-type": "image/png"})
        return r.json()["predictions"][0]["score"]

    assert enrol(client, "seven", support[7]).status_code == 201
    sevens = score()
    r = enrol(client, "seven", support[1])
    assert r.status_code == 409 and "replace=true" in r.json()["error"]
    assert enrol(client, "seven", support[1], query="?replace=false").status_code == 409
    # refused before any image is decoded or run: a duplicate with an unreadable file is a 409 too
    r = client.post("/v1/classes", data={"name": "seven"}, files=[("files", ("a.png", b"junk", "image/png"))])
    assert r.status_code == 409
    assert client.get("/v1/classes").json()["classes"] == [{"name": "seven", "shots": SHOTS}]
    assert score() == sevens  # the prototype is still the sevens'
    assert enrol(client, "seven", support[1], query="?replace=true").status_code == 201
    assert score() != sevens


def test_prototype_mode_refusals(client, digits):
    png = _png(digits)
    r = client.post("/predict?mode=prototype", content=png, headers={"content-type": "image/png"})
    assert r.status_code == 409 and "no few-shot classes" in r.json()["error"]
    r = client.post("/predict/batch?mode=prototype", files=_files([digits[0][7][0]]))
    assert r.status_code == 409
    assert client.post("/predict?mode=nearest", content=png, headers={"content-type": "image/png"}).status_code == 422
    assert client.post("/predict?mode=", content=png, headers={"content-type": "image/png"}).status_code == 422
    enrol_all(client, digits[0])
    r = client.post("/predict?mode=prototype&threshold=0.5", content=png, headers={"content-type": "image/png"})
    assert r.status_code == 400 and "threshold" in r.json()["error"]
    assert client.delete("/v1/classes/eight").status_code == 404
    r = client.post("/predict?mode=prototype", content=b"junk", headers={"content-type": "image/png"})
    assert r.status_code == 415 and set(r.json()) == {"error"}


def test_model_without_embedding_output_is_refused(fewshot_onnx, no_embedding_onnx, digits, tmp_path):
    with make_client(("digits", fewshot_onnx), ("plain", no_embedding_onnx), classes_dir=tmp_path) as c:
        wait_ready(c)
        png = _png(digits)
        for r in (c.post("/v1/classes?model=plain", data={"name": "seven"}, files=_files(digits[0][7][:1])),
                  c.get("/v1/classes?model=plain"), c.delete("/v1/classes/seven?model=plain"),
                  c.post("/predict?model=plain&mode=prototype", content=png, headers={"content-type": "image/png"})):
            assert r.status_code == 409, r.text
            assert "no 'embedding' output" in r.json()["error"]
        # the one-output model serves as before, and the other model takes classes
        assert c.post("/predict?model=plain", content=png, headers={"content-type": "image/png"}).status_code == 200
        assert [o["name"] for o in c.get("/v2/models/plain").json()["outputs"]] == ["logits"]
        assert c.post("/v1/classes?model=digits", data={"name": "seven"},
                      files=_files(digits[0][7][:1])).status_code == 201
        assert c.get("/v1/classes?model=digits").json()["classes"] == [{"name": "seven", "shots": 1}]


def test_api_key_guards_the_classes(fewshot_onnx, digits, tmp_path):
    png = _png(digits)
    with make_client(("digits", fewshot_onnx), api_key="s3cret-key", classes_dir=tmp_path) as c:
        wait_ready(c)
        ok = {"authorization": "Bearer s3cret-key"}
        for headers in (None, {"authorization": "Bearer s3cret-kez"}, {"authorization": "s3cret-key"}):
            assert enrol(c, "seven", digits[0][7][:1], headers=headers).status_code == 401
            assert c.get("/v1/classes", headers=headers).status_code == 401
            assert c.delete("/v1/classes/seven", headers=headers).status_code == 401
            r = c.post("/predict?mode=prototype", content=png, headers={**(headers or {}), "content-type": "image/png"})
            assert r.status_code == 401
        assert c.get("/v1/classes", headers=ok).json()["classes"] == []
        assert enrol(c, "seven", digits[0][7][:1], headers=ok).status_code == 201
        r = c.post("/predict?mode=prototype", content=png, headers={**ok, "content-type": "image/png"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "seven"
        assert c.delete("/v1/classes/seven", headers=ok).status_code == 200


# --- persistence ------------------------------------------------------------------------------

def _model_copy(fewshot_onnx: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "digits.onnx"
    path.write_bytes(fewshot_onnx.read_bytes())
    return path


def test_classes_persist_beside_the_model_across_restarts(fewshot_onnx, digits, tmp_path):
    model = _model_copy(fewshot_onnx, tmp_path / "models")
    support, held_out = digits
    probe = encode(held_out[3][0])
    with make_client(("digits", model)) as c:
        wait_ready(c)
        enrol_all(c, support)
        assert c.delete("/v1/classes/one").status_code == 200
        first = c.post("/predict?mode=prototype", content=probe, headers={"content-type": "image/png"}).json()
    saved = json.loads((tmp_path / "models" / "digits.classes.json").read_text())
    assert saved["format"] == "serve-prototypes/1" and [k["name"] for k in saved["classes"]] == ["zero", "seven"]
    assert [c["shots"] for c in saved["classes"]] == [SHOTS, SHOTS] and len(saved["model_sha256"]) == 64
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")]
    with make_client(("digits", model)) as c:  # a new app: the classes come back from the file
        wait_ready(c)
        assert c.get("/v1/classes").json()["classes"] == [{"name": "zero", "shots": SHOTS},
                                                          {"name": "seven", "shots": SHOTS}]
        again = c.post("/predict?mode=prototype", content=probe, headers={"content-type": "image/png"}).json()
        assert again["predictions"] == first["predictions"]


def test_classes_dir_setting_and_cli_flag(fewshot_onnx, digits, tmp_path):
    from serve.cli import build_parser, settings_from_args

    args = build_parser().parse_args([str(fewshot_onnx), "--classes-dir", str(tmp_path / "cls")])
    settings = settings_from_args(args)
    assert settings.classes_dir == tmp_path / "cls"
    assert Settings.from_json(settings.to_json()).classes_dir == tmp_path / "cls"
    with make_client(("renamed", fewshot_onnx), classes_dir=tmp_path / "cls") as c:
        wait_ready(c)
        assert enrol(c, "seven", digits[0][7][:2]).status_code == 201
    assert json.loads((tmp_path / "cls" / "renamed.classes.json").read_text())["classes"][0]["shots"] == 2
    assert not (fewshot_onnx.parent / "digits.classes.json").exists()


def test_crash_mid_write_keeps_the_previous_classes(fewshot_onnx, digits, tmp_path, monkeypatch):
    from serve import prototypes

    model = _model_copy(fewshot_onnx, tmp_path / "models")
    saved = tmp_path / "models" / "digits.classes.json"
    support, _ = digits
    with make_client(("digits", model)) as c:
        wait_ready(c)
        assert enrol(c, "zero", support[0]).status_code == 201
        before = saved.read_bytes()
        real_replace = os.replace

        def crash(src, dst):  # the temporary file is written and synced; the rename never happens
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(prototypes.os, "replace", crash)
        r = enrol(c, "one", support[1])
        assert r.status_code == 503 and "nothing was changed" in r.json()["error"]
        monkeypatch.setattr(prototypes.os, "replace", real_replace)
        assert c.get("/v1/classes").json()["classes"] == [{"name": "zero", "shots": SHOTS}]
        assert saved.read_bytes() == before
        assert not [p for p in saved.parent.iterdir() if p.name.endswith(".tmp")]  # cleaned up
        assert c.get("/healthz").status_code == 200
    # a process killed mid-write leaves its half-written temporary file behind
    (tmp_path / "models" / ".digits.classes.json.k1ll3d.tmp").write_bytes(before[: len(before) // 2])
    with make_client(("digits", model)) as c:
        wait_ready(c)
        assert c.get("/v1/classes").json()["classes"] == [{"name": "zero", "shots": SHOTS}]
        assert enrol(c, "one", support[1]).status_code == 201
    assert [k["name"] for k in json.loads(saved.read_text())["classes"]] == ["zero", "one"]


def test_unusable_class_files_are_refused_with_a_log_line(fewshot_onnx, digits, tmp_path, caplog):
    model = _model_copy(fewshot_onnx, tmp_path / "models")
    saved = tmp_path / "models" / "digits.classes.json"
    with make_client(("digits", model)) as c:
        wait_ready(c)
        enrol_all(c, digits[0])
    good = json.loads(saved.read_text())
    other_model = dict(good, model_sha256="0" * 64)
    other_size = dict(good, embedding_dim=good["embedding_dim"] + 1)
    for doc, words in ((other_model, "another model file"), (other_size, "embeddings of size"),
                       (saved.read_text()[:100], "")):
        saved.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="serve"), make_client(("digits", model)) as c:
            wait_ready(c)
            assert c.get("/v1/classes").json()["classes"] == []
            png = encode(digits[0][7][0])
            assert c.post("/predict", content=png, headers={"content-type": "image/png"}).status_code == 200
        lines = [r.getMessage() for r in caplog.records if "few-shot classes" in r.getMessage()]
        assert len(lines) == 1 and str(saved) in lines[0] and words in lines[0], lines


def test_read_only_location_names_the_flag(client, digits, monkeypatch):
    from serve import prototypes

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(prototypes.tempfile, "mkstemp", read_only)
    r = enrol(client, "seven", digits[0][7][:1])
    assert r.status_code == 503 and "--classes-dir" in r.json()["error"] and "Read-only" in r.json()["error"]
    monkeypatch.undo()
    assert client.get("/v1/classes").json()["classes"] == []


def test_read_only_location_is_warned_about_at_start(fewshot_onnx, tmp_path, monkeypatch, caplog):
    from serve import prototypes

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(prototypes.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    with caplog.at_level(logging.WARNING, logger="serve"), \
            make_client(("digits", fewshot_onnx), classes_dir=tmp_path / "ro") as c:
        wait_ready(c)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot be saved" in line and "--classes-dir" in line for line in lines), lines


def test_class_count_is_limited(client, digits, monkeypatch):
    from serve.routers import classes

    monkeypatch.setattr(classes, "MAX_CLASSES", 2)
    assert enrol(client, "zero", digits[0][0][:1]).status_code == 201
    assert enrol(client, "one", digits[0][1][:1]).status_code == 201
    r = enrol(client, "seven", digits[0][7][:1])
    assert r.status_code == 409 and "limit" in r.json()["error"]
    assert enrol(client, "one", digits[0][7][:1], query="?replace=true").status_code == 201  # replacing is fine


def test_concurrent_enrolments_are_serialised(fewshot_onnx, digits, tmp_path, monkeypatch):
    import time

    import httpx

    from serve.prototypes import PrototypeStore

    real_write = PrototypeStore._write

    def slow_write(self, classes):  # a slow disk: unserialised changes would overlap and lose updates
        time.sleep(0.05)
        real_write(self, classes)

    monkeypatch.setattr(PrototypeStore, "_write", slow_write)
    app = create_app(Settings(models=(ModelSpec("digits", fewshot_onnx),), classes_dir=tmp_path))
    names = [f"class-{i}" for i in range(6)]
    png = encode(digits[0][7][0])
    sent = names + ["class-0"]  # both "class-0" pass the check before inference; the locked one refuses one

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                rs = await asyncio.gather(*(c.post("/v1/classes", data={"name": n},
                                                   files=[("files", ("a.png", png, "image/png"))]) for n in sent))
                return rs, (await c.get("/v1/classes")).json()

    responses, listed = asyncio.run(run())
    assert sorted(r.status_code for r in responses) == [201] * len(names) + [409]  # one name sent twice
    assert sorted(c["name"] for c in listed["classes"]) == names
    saved = json.loads((tmp_path / "digits.classes.json").read_text())
    assert sorted(c["name"] for c in saved["classes"]) == names


def test_worker_processes_share_the_classes(fewshot_onnx, digits, tmp_path):
    """Two uvicorn workers: enrolments over fresh connections land in either worker, and each
    worker re-reads the file before changing it, so none is lost and every worker lists them all."""
    import httpx

    from tests.test_serve_cli import SERVE, free_port, running_server

    port = free_port()
    names = [f"class-{i}" for i in range(6)]
    cmd = SERVE + [str(fewshot_onnx), "--port", str(port), "--workers", "2", "--classes-dir", str(tmp_path),
                   "--log-level", "warning"]
    with running_server(cmd, port) as url:
        for i, name in enumerate(names):
            with httpx.Client(base_url=url) as c:  # a new connection each time
                r = c.post("/v1/classes", data={"name": name}, files=_files(digits[0][ENROLLED[i % 3]][:2]))
                assert r.status_code == 201, r.text
        for _ in range(6):
            with httpx.Client(base_url=url) as c:
                assert [k["name"] for k in c.get("/v1/classes").json()["classes"]] == names
    assert [k["name"] for k in json.loads((tmp_path / "digits.classes.json").read_text())["classes"]] == names


# --- the rest of the service ------------------------------------------------------------------

def test_metrics_count_enrolments_and_prototype_predictions(client, digits):
    def sample(text: str, name: str) -> float:
        m = re.search(rf'^{name}{{model="digits"}} ([0-9.e+]+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    enrol_all(client, digits[0])
    enrol(client, "zero", digits[0][0])  # 409: not counted
    client.post("/predict?mode=prototype", content=_png(digits), headers={"content-type": "image/png"})
    client.post("/predict/batch?mode=prototype", files=_files(digits[0][1][:3]))
    text = client.get("/metrics").text
    assert sample(text, "serve_fewshot_enrolments_total") == 3
    assert sample(text, "serve_prototype_predictions_total") == 4


def test_oip_serves_both_outputs(client, fewshot_onnx):
    import onnxruntime as ort

    meta = client.get("/v2/models/digits").json()
    dim = client.get("/v1/classes").json()["embedding_dim"]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(fewshot_onnx), providers=["CPUExecutionProvider"])
    want = dict(zip(["logits", "embedding"], sess.run(None, {"input": x})))
    inputs = [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]
    for requested in (None, ["embedding"], ["logits"], ["embedding", "logits"]):
        req = {"inputs": inputs} if requested is None else {"inputs": inputs, "outputs": [{"name": n} for n in requested]}
        r = client.post("/v2/models/digits/infer", json=req)
        assert r.status_code == 200, r.text
        outs = r.json()["outputs"]
        assert [o["name"] for o in outs] == (requested or ["logits", "embedding"])
        for o in outs:
            np.testing.assert_allclose(np.asarray(o["data"], np.float32).reshape(o["shape"]), want[o["name"]],
                                       rtol=1e-5, atol=1e-5)
    r = client.post("/v2/models/digits/infer",
                    json={"inputs": inputs, "outputs": [{"name": "embedding", "parameters": {"classification": 2}}]})
    assert r.status_code == 400 and "logits" in r.json()["error"]


def test_openapi_documents_the_classes_routes(client):
    spec = client.get("/openapi.json").json()
    assert {"post", "get"} <= set(spec["paths"]["/v1/classes"])
    assert "delete" in spec["paths"]["/v1/classes/{name}"]
    for schema in ("ClassEnrolled", "ClassList", "ClassDeleted"):
        assert schema in spec["components"]["schemas"], schema
    params = {p["name"] for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert "mode" in params
    assert "multipart/form-data" in spec["paths"]["/v1/classes"]["post"]["requestBody"]["content"]
