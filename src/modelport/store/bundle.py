"""The version manifest ``modelport.json`` (see docs/formats.md) and bundle path rules.

The manifest is the record of what a version is: its format, signature, pre/post-processing, metrics,
lineage and the sha256 of every file. It is validated with pydantic and size-limited before parsing.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Any, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelport.errors import InvalidManifest

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_FILES = 256
MAX_PATH_LEN = 255
FormatName = Literal["onnx", "torchscript", "torch_export", "torch", "sklearn", "keras"]
FORMAT_NAMES: tuple[str, ...] = get_args(FormatName)
DType = Literal["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool", "string"]
DTYPES: tuple[str, ...] = get_args(DType)
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_bundle_path(value: str) -> str:
    """Return the normalized relative path of a file inside a bundle, or raise InvalidManifest.

    Paths are relative, use '/', have at most 8 segments of letters, digits, '.', '_' and '-', and no
    segment is '.' or '..'. The check runs on the fully decoded, NFC-normalized string.
    """
    text = unicodedata.normalize("NFC", value)
    if not text or len(text) > MAX_PATH_LEN or "\\" in text or "\x00" in text:
        raise InvalidManifest(message=f"bad file path {value[:80]!r}")
    if text.startswith("/") or posixpath.normpath(text) != text:
        raise InvalidManifest(message=f"file path {value[:80]!r} must be relative and normalized")
    segments = text.split("/")
    if len(segments) > 8 or any(s in (".", "..") or not _SEGMENT_RE.fullmatch(s) for s in segments):
        raise InvalidManifest(message=f"file path {value[:80]!r} may only use letters, digits, '.', '_', '-' and '/'")
    return text


class TensorSpec(BaseModel):
    """One named tensor of a signature. ``shape`` uses -1 for a dimension of any size."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    dtype: DType = "float32"
    shape: list[int] | None = None
    allow_nan: bool = False

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) > 8 or any(d < -1 or d == 0 for d in value)):
            raise ValueError("a shape has at most 8 dimensions, each -1 (any) or positive")
        return value


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[TensorSpec] = Field(default_factory=list, max_length=64)
    outputs: list[TensorSpec] = Field(default_factory=list, max_length=64)


class Normalize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: float | list[float]
    std: float | list[float]


class PreprocessStep(BaseModel):
    """Exactly one of: ``scale`` (multiply), ``shift`` (add), ``normalize`` ((x-mean)/std), ``reshape``
    (per-example shape, without the batch dimension)."""

    model_config = ConfigDict(extra="forbid")

    scale: float | None = None
    shift: float | None = None
    normalize: Normalize | None = None
    reshape: list[int] | None = None

    @field_validator("reshape")
    @classmethod
    def _reshape_ok(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(value) > 8 or any(d < 1 for d in value)):
            raise ValueError("reshape takes 1-8 positive dimensions (the per-example shape)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> PreprocessStep:
        set_fields = [k for k in ("scale", "shift", "normalize", "reshape") if getattr(self, k) is not None]
        if len(set_fields) != 1:
            raise ValueError("each preprocess step sets exactly one of scale, shift, normalize, reshape")
        return self


class PostprocessStep(BaseModel):
    """Exactly one of: ``softmax``, ``sigmoid`` (flags), ``argmax`` (flag), ``top_k`` (k)."""

    model_config = ConfigDict(extra="forbid")

    softmax: bool | None = None
    sigmoid: bool | None = None
    argmax: bool | None = None
    top_k: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> PostprocessStep:
        set_fields = [k for k in ("softmax", "sigmoid", "argmax", "top_k") if getattr(self, k)]
        if len(set_fields) != 1:
            raise ValueError("each postprocess step sets exactly one of softmax, sigmoid, argmax, top_k")
        return self


class ServingConfig(BaseModel):
    """How a version is served; every field falls back to the server's Settings when unset."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    """Most examples merged into one model call by the dynamic batcher (1 turns merging off)."""
    max_wait_ms: float | None = Field(default=None, ge=0, le=1000)
    """How long a request may wait for others to join its batch when the model is idle (0: never)."""
    queue_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    """Most examples waiting for this version; past it requests get 429 with Retry-After."""
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    """Longest a request waits for its answer (queue + compute) before a 503."""


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent: str | None = Field(default=None, max_length=200)
    job: str | None = Field(default=None, max_length=64)
    dataset_sha256: str | None = Field(default=None, max_length=64)
    transform: dict[str, Any] | str | None = None


class Manifest(BaseModel):
    """The ``modelport.json`` of a version. ``files`` maps bundle paths to sha256 hex digests."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    format: FormatName
    entrypoint: str
    signature: Signature = Field(default_factory=Signature)
    preprocess: list[PreprocessStep] = Field(default_factory=list, max_length=32)
    postprocess: list[PostprocessStep] = Field(default_factory=list, max_length=32)
    labels: list[str] | None = Field(default=None, max_length=100_000)
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str = Field(default="", max_length=10_000)
    lineage: Lineage = Field(default_factory=Lineage)
    architecture: dict[str, Any] | None = None
    """For format ``torch``: the training spec's ``model`` section (``layers``) and ``input_shape``."""
    serving: ServingConfig = Field(default_factory=ServingConfig)
    files: dict[str, str] = Field(default_factory=dict)
    report: dict[str, Any] | None = None
    """Set by the platform only (an optimize job): what this version gained and lost against its parent."""

    @field_validator("files")
    @classmethod
    def _files_ok(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_FILES:
            raise ValueError(f"at most {MAX_FILES} files per version")
        for path, digest in value.items():
            check_bundle_path(path)
            if not SHA256_RE.fullmatch(digest):
                raise ValueError(f"file {path!r}: sha256 must be 64 lower-case hex digits")
        return value

    @field_validator("entrypoint")
    @classmethod
    def _entry_ok(cls, value: str) -> str:
        return check_bundle_path(value)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2)


class ManifestInput(BaseModel):
    """What an uploader may say about a new version; the platform fills in the rest."""

    model_config = ConfigDict(extra="forbid")

    format: FormatName | None = None
    entrypoint: str | None = None
    signature: Signature | None = None
    preprocess: list[PreprocessStep] = Field(default_factory=list, max_length=32)
    postprocess: list[PostprocessStep] = Field(default_factory=list, max_length=32)
    labels: list[str] | None = Field(default=None, max_length=100_000)
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str = Field(default="", max_length=10_000)
    lineage: Lineage = Field(default_factory=Lineage)
    architecture: dict[str, Any] | None = None
    serving: ServingConfig = Field(default_factory=ServingConfig)


def parse_manifest_input(raw: bytes | str | None) -> ManifestInput:
    """Parse the optional manifest part of an upload; refuse oversized, deep or malformed JSON."""
    if raw is None or raw in ("", b""):
        return ManifestInput()
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidManifest(message=f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidManifest(message=f"not valid JSON ({exc.args[0].split(':')[0]})") from None
    if not isinstance(parsed, dict):
        raise InvalidManifest(message="must be a JSON object")
    try:
        return ManifestInput.model_validate(parsed)
    except ValidationError as exc:
        raise InvalidManifest(message=describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field.path: what is wrong`` (no input values echoed back)."""
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
