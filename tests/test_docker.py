"""The Docker image, really built and run: it serves a real digit image over HTTP with the same
top-1 as PyTorch (what ``compress eval`` computes), runs as a non-root user, reports healthy, and
has neither torch nor the compression code in it.

The Docker engine comes from ``../shared/tools/docker-local.sh`` (it installs and starts dockerd
and builds a local stand-in for python:3.11-slim); the test skips, saying why, only when that
script is absent or cannot start an engine. Build and run use ``--network host``."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.test_serve import digit_test_images, digits_onnx, encode, torch_logits  # noqa: F401
from tests.test_serve_cli import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER_LOCAL = ROOT.parent / "shared" / "tools" / "docker-local.sh"
IMAGE = "deepcompress-serve:test"
LABEL = "org.deepcompress.test=serve"  # on every image this file builds, so it can remove its own old ones
BUILD_TIMEOUT = 900


def _base_requirements(text: str) -> list[str]:
    return sorted(re.split(r"[<>=!~; ]", line.strip())[0].lower() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))


def test_image_requirements_are_the_base_install():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    image = (ROOT / "docker" / "requirements.txt").read_text()
    assert _base_requirements(image) == _base_requirements("\n".join(project["dependencies"]))
    assert not {"torch", "torchvision"} & set(_base_requirements(image))


def test_dockerfile_contract():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
    assert re.search(r"^USER 10001$", text, re.M) and "HEALTHCHECK" in text
    assert "COPY serve/ /app/serve/" in text and "compress" not in re.sub(r"#.*", "", text).replace(
        "compileall", "")
    assert "ARG MODEL" in text and "/models/" in text
    for var in ("PORT", "WORKERS", "THREADS"):
        assert f"${var}" in (ROOT / "docker" / "entrypoint.sh").read_text()


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {out.stderr[-2000:]}")
    return out


@pytest.fixture(scope="module")
def docker_base() -> str:
    if not DOCKER_LOCAL.exists():
        pytest.skip(f"no Docker engine: {DOCKER_LOCAL} is missing")
    try:
        out = subprocess.run(["bash", str(DOCKER_LOCAL)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("no Docker engine: docker-local.sh did not finish within 10 minutes")
    if out.returncode != 0 or not out.stdout.strip():
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no Docker engine could be started: {last}")
    return _traversable_base(out.stdout.strip().splitlines()[-1])


def _traversable_base(base: str) -> str:
    """``base``, or a copy of it whose / is world-searchable. docker-local.sh imports a debootstrap
    folder made by ``mktemp -d``, so its / is mode 0700 and a non-root USER cannot start anything;
    an image layer cannot change /'s mode, but a re-import of the exported files (no "./" entry)
    gets the default 0755. python:3.11-slim needs none of this."""
    probe = _docker("run", "--rm", "--network", "host", "--user", "65534", base, "/bin/true", check=False)
    if probe.returncode == 0:
        return base
    fixed = base + "-searchable-root"
    if _docker("image", "inspect", fixed, check=False).returncode == 0:
        return fixed
    cid = _docker("create", base, "/bin/true").stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-c", "ENV LANG=C.UTF-8", "-", fixed], stdin=export.stdout,
                                  capture_output=True, text=True, timeout=300)
        export.wait(60)
        assert imported.returncode == 0 and export.returncode == 0, imported.stderr
    finally:
        _docker("rm", "-f", cid, check=False)
    return fixed


@pytest.fixture(scope="module")
def image(docker_base, digits_onnx) -> dict:  # noqa: F811
    """Build the image with the test model baked in (--build-arg MODEL)."""
    baked = ROOT / "docker" / "models" / "digits.onnx"  # the build context's place for models to bake in
    shutil.copy(digits_onnx, baked)
    start = time.time()
    try:
        _docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={docker_base}",
                "--build-arg", "MODEL=docker/models/digits.onnx", "--label", LABEL, "-f", "docker/Dockerfile",
                "-t", IMAGE, str(ROOT), timeout=BUILD_TIMEOUT)
    finally:
        baked.unlink()
        _remove_old_test_images()
    context_dir = ROOT / "runs" / "docker_test"
    context_dir.mkdir(parents=True, exist_ok=True)
    size = int(_docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip())
    facts = {"image": IMAGE, "base": docker_base, "bytes": size, "build_seconds": round(time.time() - start, 1)}
    (context_dir / "image.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def _remove_old_test_images() -> None:
    """Each rebuild leaves the previous test image untagged. dockerd here uses the vfs driver, which
    stores every layer as a full copy (a 0.5 GB image takes several GB), so thirty stale builds
    filled the disk once: remove this file's untagged images and the containers left behind."""
    _docker("container", "prune", "-f", "--filter", f"label={LABEL}", check=False)
    _docker("image", "prune", "-f", "--filter", f"label={LABEL}", check=False, timeout=600)


class Container:
    def __init__(self, *run_args: str):
        self.port = free_port()
        self.name = f"serve-test-{uuid.uuid4().hex[:8]}"
        try:
            _docker("run", "-d", "--network", "host", "--name", self.name, "-e", f"PORT={self.port}", *run_args)
        except AssertionError:
            self.remove()  # a failed run can leave a created container behind
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            state = _docker("inspect", "-f", "{{.State.Running}}", self.name).stdout.strip()
            if state != "true":
                raise AssertionError(f"container exited: {_docker('logs', self.name, check=False).stderr[-2000:]}")
            time.sleep(0.3)
        raise AssertionError("container did not become ready")

    def health(self) -> str:
        return _docker("inspect", "-f", "{{.State.Health.Status}}", self.name).stdout.strip()

    def remove(self) -> None:
        _docker("rm", "-f", self.name, check=False)


def test_container_classifies_a_real_digit_like_pytorch(image, digits_onnx):  # noqa: F811
    import httpx

    images, targets = digit_test_images()
    picks = [0, 1, 2, 3, 4]
    expected = torch_logits(digits_onnx, [images[i] for i in picks]).argmax(1)
    box = Container(IMAGE)
    try:
        box.wait_ready()
        for i, want in zip(picks, expected):
            r = httpx.post(box.url + "/predict", content=encode(images[i]), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["index"] == int(want)
            assert "server-timing" in r.headers
        assert httpx.get(box.url + "/model").json()["name"] == "digits"
        deadline = time.time() + 60  # HEALTHCHECK: first probe after its 10 s interval
        while box.health() != "healthy" and time.time() < deadline:
            time.sleep(1)
        assert box.health() == "healthy"
    finally:
        box.remove()


def test_image_has_no_torch_no_compress_and_runs_as_non_root(image):
    out = _docker("run", "--rm", "--network", "host", IMAGE, "python", "-c",
                  "import importlib.util as u, os, json; print(json.dumps({'uid': os.getuid(), "
                  "'torch': bool(u.find_spec('torch')), 'compress': bool(u.find_spec('compress')), "
                  "'models': bool(u.find_spec('models')), 'serve': bool(u.find_spec('serve'))}))")
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"uid": 10001, "torch": False, "compress": False, "models": False, "serve": True}
    assert image["bytes"] < 1_000_000_000, image


def test_mounted_models_and_environment_settings(image, digits_onnx, tmp_path):  # noqa: F811
    import httpx

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(digits_onnx, models / "mounted.onnx")
    models.chmod(0o755)
    (models / "mounted.onnx").chmod(0o644)
    tmp_path.chmod(0o755)
    box = Container("-v", f"{models}:/models:ro", "-e", "THREADS=2", "-e", "MAX_BATCH=4", IMAGE)
    try:
        box.wait_ready()
        details = httpx.get(box.url + "/model").json()
        assert details["name"] == "mounted" and details["threads"] == 2 and details["max_batch"] == 4
        png = encode(digit_test_images()[0][0])
        assert httpx.post(box.url + "/predict", content=png, headers={"content-type": "image/png"}).status_code == 200
    finally:
        box.remove()
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o755)
    out = _docker("run", "--rm", "--network", "host", "-v", f"{empty}:/models:ro", IMAGE, check=False)
    assert out.returncode == 2 and "no model" in out.stderr
