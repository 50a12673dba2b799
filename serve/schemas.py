"""Pydantic schemas of every request and response (they are what the OpenAPI page shows)."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, one line")


class Timing(BaseModel):
    """Milliseconds spent in each stage of this request (``Server-Timing`` has the same)."""

    decode: float = Field(description="image bytes → pixels (all images of the request)")
    preprocess: float = Field(description="RGB, resize, normalise")
    queue: float = Field(description="waiting for the model (micro-batching or busy)")
    inference: float = Field(description="the ONNX Runtime call (shared with the batch it ran in)")
    total: float = Field(description="request received → response built")


class Prediction(BaseModel):
    label: str
    index: int = Field(description="output index of the label")
    score: float = Field(description="softmax probability (multiclass), sigmoid (multilabel), or cosine "
                                     "similarity to the class prototype (mode=prototype)")


class PredictResponse(BaseModel):
    model: str
    task: Literal["multiclass", "multilabel"]
    mode: Literal["prototype"] | None = Field(None, description="present with mode=prototype: the labels are "
                                              "the enrolled few-shot classes, the index their enrolment order")
    predictions: list[Prediction]
    threshold: float | None = Field(None, description="multilabel: the threshold applied")
    batch_size: int = Field(description="images in the ONNX Runtime call this request ran in")
    timing_ms: Timing


class BatchItem(BaseModel):
    filename: str | None
    predictions: list[Prediction]


class BatchResponse(BaseModel):
    model: str
    task: Literal["multiclass", "multilabel"]
    mode: Literal["prototype"] | None = None
    threshold: float | None = None
    results: list[BatchItem]
    batch_size: int
    timing_ms: Timing


class FewShotClass(BaseModel):
    name: str
    shots: int = Field(description="images the prototype was made from")


class ClassList(BaseModel):
    model: str
    embedding_dim: int = Field(description="size of the model's embedding (the prototypes' length)")
    classes: list[FewShotClass] = Field(description="in enrolment order (the `index` of a prototype prediction)")


class ClassEnrolled(BaseModel):
    model: str
    name: str
    shots: int
    index: int = Field(description="the class's index in prototype predictions")
    replaced: bool = Field(description="true when the name existed and ?replace=true replaced it")
    classes: int = Field(description="classes enrolled for the model now")


class ClassDeleted(BaseModel):
    model: str
    deleted: str
    classes: int = Field(description="classes left")


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelDetails(BaseModel):
    """A served model: what it expects, what it answers, where it came from."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    default: bool
    file: str
    file_bytes: int
    sha256: str
    task: str
    num_classes: int
    labels: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    threshold: float
    arch: str | None
    arch_kwargs: dict[str, Any]
    history: list[dict[str, Any]] = Field(description="one record per compression stage, from the ONNX metadata")
    has_metadata: bool = Field(description="false for an ONNX file without compress metadata")
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    threads: int
    max_batch: int


class ModelList(BaseModel):
    default: str
    models: list[ModelDetails]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, bool]


# --- Open Inference Protocol v2 (KServe / Triton REST) ---------------------------------------

Parameters = dict[str, Union[bool, int, float, str]]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; absent with binary data")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]
