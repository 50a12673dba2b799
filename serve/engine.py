"""ONNX Runtime models: one CPU session per model with explicit intra-op threads, the model facts
read from the file's ``metadata_props`` and the post-processing (softmax top-k or sigmoid above a
threshold).

The metadata keys are those ``compress export`` writes (each value a JSON document): ``labels``,
``mean``, ``std``, ``input_size`` [C, H, W], ``task`` ("multiclass" | "multilabel"),
``interpolation``, ``history``, ``arch``, ``arch_kwargs``, ``num_classes``, ``format``, and an
optional ``threshold`` (default decision threshold of a multi-label model). A third-party ONNX
file without them is served with labels "0".."K-1", mean 0 / std 1 and the graph's input size.

A model may have a second output, the pooled penultimate features (N, D) float32 that few-shot
classes are enrolled from: named by ``embedding_output`` (and ``embedding_dim`` = D) in the
metadata, or simply called ``embedding``. The logits are the other 2-D output, taken by name, so
``/predict`` runs only the logits and a two-output model serves exactly as a one-output one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .images import INTERPOLATIONS, ImageTransform

OUR_FORMAT = "compress-onnx/1"
DEFAULT_THRESHOLD = 0.5
DEFAULT_SIDE = 224  # input side for a model whose graph and metadata both leave it open


class ModelLoadError(ValueError):
    """An ONNX file that cannot be served (one line)."""


def ort_session(path: str | os.PathLike, threads: int = 1, *, spinning: bool = False):
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one inter-op thread, sequential
    execution, all graph optimisations. Spinning is off by default: on a CPU shared with the HTTP
    server's own threads, busy-waiting intra-op workers steal the cores that parse requests.

    A ``.dcz`` container (``compress huffman encode``) is decoded with numpy (:mod:`dcz`): its
    stored graph gets the decoded weights as external initializers."""
    import onnxruntime as ort

    model: str | bytes = str(path)
    so = _session_options(threads, spinning)
    if Path(path).suffix.lower() == ".dcz":
        model, names, arrays = read_dcz(path)
        so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def read_dcz(path: str | os.PathLike) -> tuple[bytes, list[str], list[np.ndarray]]:
    """(graph bytes, initializer names, their arrays) of a ``.dcz`` container; :class:`ModelLoadError`
    when it is damaged or holds no graph."""
    import dcz

    try:
        container = dcz.read(path)
    except dcz.DczError as e:  # its message starts with the path
        raise ModelLoadError(str(e)) from None
    links = (container.header.get("onnx") or {}).get("initializers") or {}
    if container.graph is None or not isinstance(links, dict):
        raise ModelLoadError(f"{path}: the container holds no ONNX graph (decode it and export to ONNX)")
    missing = sorted(set(links.values()) - set(container.tensors))
    if missing:
        raise ModelLoadError(f"{path}: the graph needs tensor(s) the container lacks: {', '.join(missing[:3])}")
    names = list(links)
    return container.graph, names, [np.array(container.tensors[links[n]], order="C") for n in names]


def _session_options(threads: int, spinning: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str          # Open Inference Protocol name, e.g. "FP32"
    shape: list[int]       # -1 for a dynamic axis


ORT_TO_OIP = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int8)": "INT8",
              "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
    return TensorSpec(arg.name, ORT_TO_OIP.get(arg.type, arg.type), shape)


@dataclass
class ModelInfo:
    """The facts about one served model (what ``/model`` and ``/v2/models/{name}`` show)."""

    name: str
    path: Path
    task: str
    labels: list[str]
    input_size: list[int]              # [C, H, W] images are resized to
    mean: list[float]
    std: list[float]
    interpolation: str
    threshold: float
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    has_metadata: bool = True
    file_bytes: int = 0
    sha256: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)   # every graph output
    logits_output: str = ""                 # the (N, classes) output /predict reads
    embedding_output: str | None = None     # the (N, D) features output, if the model has one
    embedding_dim: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def served_outputs(self) -> list[TensorSpec]:
        """The outputs the Open Inference Protocol offers: logits, then the embedding (if any)."""
        names = [self.logits_output] + ([self.embedding_output] if self.embedding_output else [])
        by_name = {o.name: o for o in self.outputs}
        return [by_name[n] for n in names]


def _json_prop(props: dict[str, str], key: str, default: Any, source: str) -> Any:
    if key not in props:
        return default
    try:
        return json.loads(props[key])
    except ValueError:
        raise ModelLoadError(f"{source}: metadata {key!r} is not valid JSON") from None


EMBEDDING_OUTPUT = "embedding"  # the output's name when the metadata does not name it


def _text_prop(props: dict[str, str], key: str) -> str | None:
    """A metadata value that is a string, stored as JSON text (ours) or bare (hand-written)."""
    if key not in props:
        return None
    try:
        value = json.loads(props[key])
    except ValueError:
        return props[key]
    return value if isinstance(value, str) else props[key]


def _embedding_output(props: dict[str, str], outputs: list[TensorSpec], source: str) \
        -> tuple[TensorSpec | None, int | None]:
    """(the embedding output, D) or (None, None); :class:`ModelLoadError` when the metadata names
    an embedding the graph does not have, or one of the wrong kind."""
    named = _text_prop(props, "embedding_output")
    want = named or EMBEDDING_OUTPUT
    found = next((o for o in outputs if o.name == want), None)
    if found is None or len(outputs) < 2:
        if named:
            raise ModelLoadError(f"{source}: metadata embedding_output {named!r} is not one of the graph's "
                                 f"outputs {[o.name for o in outputs]}")
        return None, None
    dim = _json_prop(props, "embedding_dim", None, source)
    problems = []
    if len(found.shape) != 2 or found.datatype != "FP32":
        problems.append(f"must be FP32 (N, D), is {found.datatype} {found.shape}")
    elif dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
        problems.append(f"embedding_dim must be a positive integer, got {dim!r}")
    elif dim is not None and found.shape[1] > 0 and dim != found.shape[1]:
        problems.append(f"embedding_dim {dim} disagrees with the graph's {found.shape}")
    elif dim is None and found.shape[1] <= 0:
        problems.append("its dimension is dynamic and the metadata has no embedding_dim")
    if problems:
        raise ModelLoadError(f"{source}: embedding output {want!r}: {'; '.join(problems)}")
    return found, int(dim if dim is not None else found.shape[1])


def read_info(name: str, path: Path, session) -> ModelInfo:
    """Parse the model facts from ``session``'s metadata, checked against its graph."""
    source = str(path)
    inputs = [_spec(a) for a in session.get_inputs()]
    outputs = [_spec(a) for a in session.get_outputs()]
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(f"{source}: expected one image input of rank 4 (N, C, H, W), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
    if inputs[0].datatype != "FP32":
        raise ModelLoadError(f"{source}: the input must be float32, got {inputs[0].datatype}")
    props = dict(session.get_modelmeta().custom_metadata_map)
    embedding, embedding_dim = _embedding_output(props, outputs, source)
    logits_out = next((o for o in outputs if o is not embedding), None)
    if logits_out is None or len(logits_out.shape) != 2:
        raise ModelLoadError(f"{source}: expected a (N, classes) output, got {[(o.name, o.shape) for o in outputs]}")
    ours = _json_prop(props, "format", None, source) == OUR_FORMAT
    _, c, h, w = inputs[0].shape
    k = logits_out.shape[1]
    input_size = _json_prop(props, "input_size", None, source) if ours else None
    if input_size is None:
        side = h if h > 0 else DEFAULT_SIDE
        input_size = [c if c > 0 else 3, side, w if w > 0 else side]
    labels = _json_prop(props, "labels", None, source) if ours else None
    if labels is None:
        if k <= 0:
            raise ModelLoadError(f"{source}: no labels in the metadata and a dynamic class axis")
        labels = [str(i) for i in range(k)]
    task = _json_prop(props, "task", "multiclass", source) if ours else "multiclass"
    mean = _json_prop(props, "mean", [0.0, 0.0, 0.0], source) if ours else [0.0, 0.0, 0.0]
    std = _json_prop(props, "std", [1.0, 1.0, 1.0], source) if ours else [1.0, 1.0, 1.0]
    interpolation = _json_prop(props, "interpolation", "bilinear", source) or "bilinear"
    threshold = _json_prop(props, "threshold", DEFAULT_THRESHOLD, source)
    problems = []
    if not (isinstance(labels, list) and all(isinstance(s, str) for s in labels) and labels):
        problems.append("labels must be a list of strings")
    elif k > 0 and len(labels) != k:
        problems.append(f"{len(labels)} labels for {k} outputs")
    if task not in ("multiclass", "multilabel"):
        problems.append(f"unknown task {task!r}")
    if not (isinstance(input_size, list) and len(input_size) == 3 and all(isinstance(v, int) and v > 0
                                                                         for v in input_size)):
        problems.append(f"input_size must be [C, H, W], got {input_size!r}")
    elif input_size[0] != 3 or (c > 0 and c != 3):
        problems.append(f"only 3-channel (RGB) models can classify images, this one has {input_size[0]}")
    elif (h > 0 and h != input_size[1]) or (w > 0 and w != input_size[2]):
        problems.append(f"metadata input_size {input_size} disagrees with the graph's input {inputs[0].shape}")
    for key, vals in (("mean", mean), ("std", std)):
        if not (isinstance(vals, list) and len(vals) == 3 and all(isinstance(v, (int, float)) for v in vals)):
            problems.append(f"{key} must be 3 numbers")
    if not problems and min(std) <= 0:
        problems.append("std must be > 0")
    if interpolation not in INTERPOLATIONS:
        problems.append(f"unknown interpolation {interpolation!r}")
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        problems.append(f"threshold must be in (0, 1), got {threshold!r}")
    if problems:
        raise ModelLoadError(f"{source}: unusable metadata: {'; '.join(problems)}")
    data = path.read_bytes()
    return ModelInfo(
        name=name, path=path, task=task, labels=list(labels), input_size=list(input_size),
        mean=[float(v) for v in mean], std=[float(v) for v in std], interpolation=interpolation,
        threshold=float(threshold), arch=_json_prop(props, "arch", None, source) if ours else None,
        arch_kwargs=_json_prop(props, "arch_kwargs", {}, source) if ours else {},
        history=_json_prop(props, "history", [], source) if ours else [], has_metadata=ours,
        file_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), inputs=inputs, outputs=outputs,
        logits_output=logits_out.name, embedding_output=embedding.name if embedding else None,
        embedding_dim=embedding_dim)


class Model:
    """One ONNX model ready to run: session, facts and image transform."""

    def __init__(self, name: str, path: str | os.PathLike, threads: int = 1, *, spinning: bool = False):
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{path}: is a directory, expected an ONNX model")
        try:
            self.session = ort_session(path, threads, spinning=spinning)
        except ModelLoadError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            text = str(e).strip().splitlines()
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({text[0][:200] if text else type(e).__name__})") \
                from None
        self.threads = int(threads)
        self.info = read_info(name, path, self.session)
        self.input_name = self.info.inputs[0].name
        self.output_name = self.info.logits_output
        self._feature_names = [self.output_name] + ([self.info.embedding_output] if self.info.embedding_output else [])
        _, h, w = self.info.input_size
        self.transform = ImageTransform(h, w, tuple(self.info.mean), tuple(self.info.std), self.info.interpolation)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.info.input_size
        return (c, h, w)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for a float32 batch (N, C, H, W). Blocking; thread-safe."""
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    @property
    def has_embedding(self) -> bool:
        return self.info.embedding_output is not None

    def run_features(self, batch: np.ndarray) -> np.ndarray:
        """Logits and embedding of one call, side by side: (N, classes + D) float32 (split with
        :meth:`split_features`). Blocking; thread-safe. Only for a model with an embedding."""
        logits, embedding = self.session.run(self._feature_names, {self.input_name: batch})
        if logits.shape[1] != self.info.num_classes or embedding.shape[1] != self.info.embedding_dim:
            raise ValueError(f"outputs of shape {logits.shape} and {embedding.shape}, expected "
                             f"(N, {self.info.num_classes}) and (N, {self.info.embedding_dim})")
        return np.concatenate([logits, embedding.astype(np.float32, copy=False)], axis=1)

    def split_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, classes), embedding (N, D)) of :meth:`run_features`' rows."""
        k = self.info.num_classes
        return features[:, :k], features[:, k:]

    def warm_up(self) -> None:
        self.run(np.zeros((1, *self.image_shape), dtype=np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # no overflow for large |x|


# Up to this many classes the scores are computed on Python floats: a handful of numpy calls costs
# more than the arithmetic, several times more right after an inference has flushed the CPU caches.
SMALL_K = 32


def top_predictions(info: ModelInfo, logits: np.ndarray, k: int | None, threshold: float | None) \
        -> list[dict[str, Any]]:
    """``[{label, index, score}]`` for one image's logits (K,), best first (ties: lower index first).

    multiclass: softmax, the ``k`` best. multilabel: sigmoid, every label scoring at least
    ``threshold`` (default the model's), at most ``k`` of them when ``k`` is given. The scores are
    those of :func:`softmax` / :func:`sigmoid` in float64 (to the last bit above ``SMALL_K``
    classes, within rounding, ~1e-15 relative, below)."""
    if len(logits) <= SMALL_K:
        return _top_small(info, logits.tolist(), k, threshold)
    z = logits.astype(np.float64)
    if info.task == "multilabel":
        scores = 0.5 * (1.0 + np.tanh(0.5 * z))
        cut = info.threshold if threshold is None else threshold
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= cut]
        if k is not None:
            order = order[:k]
    else:
        z -= logits.max()
        scores = np.exp(z, out=z)
        scores /= scores.sum()
        order = np.argsort(-scores, kind="stable")[:k or len(scores)]
    labels = info.labels
    return [{"label": labels[i], "index": i, "score": score}
            for i, score in zip(order.tolist(), scores[order].tolist())]


def _top_small(info: ModelInfo, logits: list[float], k: int | None, threshold: float | None) \
        -> list[dict[str, Any]]:
    """:func:`top_predictions` on Python floats (the same formulas)."""
    if info.task == "multilabel":
        scores = [0.5 * (1.0 + math.tanh(0.5 * v)) for v in logits]
        cut = info.threshold if threshold is None else threshold
        order = [i for i in sorted(range(len(scores)), key=scores.__getitem__, reverse=True) if scores[i] >= cut]
        if k is not None:
            order = order[:k]
    else:
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        scores = [e / total for e in exps]
        order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:k or len(scores)]
    labels = info.labels
    return [{"label": labels[i], "index": i, "score": scores[i]} for i in order]
