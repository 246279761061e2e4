"""The one exception hierarchy of Modelport.

Every error a caller can cause has a stable string ``code`` and builds its own message from typed,
keyword-only fields. Nothing here knows about HTTP: ``api/errors.py`` maps each class to a status once,
and ``client/errors.py`` maps the JSON back to the same classes.

    ModelportError                      code "error"
    ├── BadRequest                      400 "bad_request"
    │   ├── InvalidName                 400 "invalid_name"
    │   ├── InvalidReference            400 "invalid_reference"
    │   ├── UnsupportedFormat           400 "unsupported_format"
    │   ├── UnsafeFormat                400 "unsafe_format"       (pickle and friends)
    │   ├── InvalidArtifact             400 "invalid_artifact"
    │   ├── InvalidManifest             400 "invalid_manifest"
    │   ├── InvalidInput                400 "invalid_input"       (shape, dtype, NaN)
    │   ├── InvalidJobSpec              400 "invalid_job_spec"    (with the field path)
    │   └── JsonTooDeep                 400 "json_too_deep"       (past max_json_depth)
    ├── Unauthenticated                 401 "unauthenticated"
    ├── PermissionDenied                403 "permission_denied"
    ├── NotFound                        404 "not_found"
    │   ├── ModelNotFound               404 "model_not_found"
    │   ├── VersionNotFound             404 "version_not_found"
    │   ├── AliasNotFound               404 "alias_not_found"
    │   ├── FileNotFoundInVersion       404 "file_not_found"
    │   ├── KeyNotFound                 404 "key_not_found"
    │   ├── JobNotFound                 404 "job_not_found"
    │   ├── DatasetNotFound             404 "dataset_not_found"
    │   ├── ReportNotFound              404 "report_not_found"    (a version no optimize job made)
    │   └── RouteNotFound               404 "route_not_found"
    ├── Conflict                        409 "conflict"
    │   ├── ModelExists                 409 "model_exists"
    │   ├── AliasInUse                  409 "alias_in_use"
    │   ├── ModelHasAliases             409 "model_has_aliases"
    │   ├── JobFinished                 409 "job_finished"
    │   └── DatasetExists               409 "dataset_exists"
    ├── RequestTimeout                  408 "request_timeout"     (a body that did not arrive in time)
    ├── PayloadTooLarge                 413 "payload_too_large"
    ├── UnsupportedMediaType            415 "unsupported_media_type"
    ├── ValidationFailed                422 "validation_failed"
    │   └── ModelFailed                 422 "model_failed"        (the model raised on valid input)
    ├── TooManyRequests                 429 "too_many_requests"
    ├── IntegrityError                  500 "integrity_error"     (a stored blob does not match its hash)
    └── Unavailable                     503 "unavailable"
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelportError(Exception):
    """Base of every error Modelport raises on purpose."""

    code: ClassVar[str] = "error"

    def __init__(self, *, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        return self.message


class BadRequest(ModelportError):
    code = "bad_request"


class InvalidName(BadRequest):
    code = "invalid_name"

    def __init__(self, *, kind: str, value: str) -> None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(
            message=(
                f"invalid {kind} name {shown!r}: use 1-63 characters of lower-case letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            ),
            details={"kind": kind},
        )


class InvalidReference(BadRequest):
    code = "invalid_reference"

    def __init__(self, *, value: str, reason: str) -> None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(
            message=f"invalid model reference {shown!r}: {reason}; use 'name', 'name:3' or 'name@alias'",
        )


class UnsupportedFormat(BadRequest):
    code = "unsupported_format"

    def __init__(self, *, filename: str, supported: list[str]) -> None:
        super().__init__(
            message=(
                f"cannot tell the model format of {filename!r}; supported: {', '.join(supported)} "
                "(or pass format= explicitly)"
            ),
            details={"supported": supported},
        )


class UnsafeFormat(BadRequest):
    code = "unsafe_format"

    def __init__(self, *, filename: str, reason: str, instead: str) -> None:
        super().__init__(
            message=(
                f"refused {filename!r}: {reason}. Modelport never loads pickle or runs code from a model "
                f"file; upload {instead} instead"
            ),
            details={"instead": instead},
        )


class InvalidArtifact(BadRequest):
    code = "invalid_artifact"

    def __init__(self, *, message: str) -> None:
        super().__init__(message=message)


class InvalidManifest(BadRequest):
    code = "invalid_manifest"

    def __init__(self, *, message: str) -> None:
        super().__init__(message=f"invalid manifest: {message}")


class InvalidInput(BadRequest):
    code = "invalid_input"

    def __init__(self, *, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message=message, details=details)


class InvalidJobSpec(BadRequest):
    code = "invalid_job_spec"

    def __init__(self, *, field: str, problem: str) -> None:
        super().__init__(message=f"invalid job spec: {field}: {problem}", details={"field": field})


class JsonTooDeep(BadRequest):
    code = "json_too_deep"

    def __init__(self, *, limit: int, what: str = "the JSON body") -> None:
        super().__init__(
            message=f"{what} nests arrays and objects deeper than {limit} levels (the server's max_json_depth)",
            details={"max_json_depth": limit},
        )


class Unauthenticated(ModelportError):
    code = "unauthenticated"

    def __init__(self, *, reason: str = "missing or invalid API key") -> None:
        super().__init__(message=f"{reason}; send 'Authorization: Bearer <key>'")


class PermissionDenied(ModelportError):
    code = "permission_denied"

    def __init__(self, *, action: str, target: str) -> None:
        super().__init__(
            message=f"permission denied: you may not {action} {target}",
            details={"action": action},
        )


class NotFound(ModelportError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, *, name: str) -> None:
        super().__init__(message=f"model {name!r} not found", details={"model": name})


class VersionNotFound(NotFound):
    code = "version_not_found"

    def __init__(self, *, model: str, version: int | None = None, archived_only: bool = False) -> None:
        if version is not None:
            msg = f"model {model!r} has no version {version}"
        elif archived_only:
            msg = f"model {model!r} has no ready version (all are archived); set one ready or give name:N"
        else:
            msg = f"model {model!r} has no versions yet"
        super().__init__(message=msg, details={"model": model, "version": version})


class AliasNotFound(NotFound):
    code = "alias_not_found"

    def __init__(self, *, model: str, alias: str) -> None:
        super().__init__(
            message=f"model {model!r} has no alias {alias!r}",
            details={"model": model, "alias": alias},
        )


class FileNotFoundInVersion(NotFound):
    code = "file_not_found"

    def __init__(self, *, model: str, version: int, path: str) -> None:
        super().__init__(
            message=f"version {version} of model {model!r} has no file {path!r}",
            details={"model": model, "version": version},
        )


class KeyNotFound(NotFound):
    code = "key_not_found"

    def __init__(self, *, key_id: str) -> None:
        super().__init__(message=f"API key {key_id!r} not found")


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, *, job_id: str) -> None:
        shown = job_id if len(job_id) <= 40 else job_id[:37] + "..."
        super().__init__(message=f"job {shown!r} not found", details={"job": shown})


class DatasetNotFound(NotFound):
    code = "dataset_not_found"

    def __init__(self, *, name: str) -> None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(message=f"dataset {shown!r} not found", details={"dataset": shown})


class ReportNotFound(NotFound):
    code = "report_not_found"

    def __init__(self, *, model: str, version: int) -> None:
        super().__init__(
            message=f"version {version} of model {model!r} has no report (only versions made by an optimize job do)",
            details={"model": model, "version": version},
        )


class RouteNotFound(NotFound):
    code = "route_not_found"

    def __init__(self, *, path: str) -> None:
        super().__init__(message="no such endpoint; see /docs for the API")


class Conflict(ModelportError):
    code = "conflict"


class ModelExists(Conflict):
    code = "model_exists"

    def __init__(self, *, name: str) -> None:
        super().__init__(message=f"model {name!r} already exists", details={"model": name})


class AliasInUse(Conflict):
    code = "alias_in_use"

    def __init__(self, *, model: str, version: int, aliases: list[str]) -> None:
        super().__init__(
            message=(
                f"version {version} of model {model!r} is pointed to by alias(es) {', '.join(aliases)}; "
                "move or delete them first"
            ),
            details={"model": model, "version": version, "aliases": aliases},
        )


class ModelHasAliases(Conflict):
    code = "model_has_aliases"

    def __init__(self, *, model: str, aliases: list[str]) -> None:
        super().__init__(
            message=(
                f"model {model!r} still has alias(es) {', '.join(aliases)}; delete them first, or delete "
                "with force as an owner"
            ),
            details={"model": model, "aliases": aliases},
        )


class JobFinished(Conflict):
    code = "job_finished"

    def __init__(self, *, job_id: str, status: str) -> None:
        super().__init__(
            message=f"job {job_id!r} already ended ({status}); only queued or running jobs can be cancelled",
            details={"job": job_id, "status": status},
        )


class DatasetExists(Conflict):
    code = "dataset_exists"

    def __init__(self, *, name: str) -> None:
        super().__init__(message=f"dataset {name!r} already exists", details={"dataset": name})


class RequestTimeout(ModelportError):
    """A request body that did not arrive in time (``api/guards.py::BodyWatch``).

    Only the HTTP edge raises it; clients see 408 ``request_timeout`` and the connection closes.
    """

    code = "request_timeout"

    def __init__(self, *, seconds: float) -> None:
        super().__init__(
            message=f"the request body did not arrive in time ({seconds:g} s plus time for its size); "
            "the connection is closed",
            details={"timeout_s": seconds},
        )


class PayloadTooLarge(ModelportError):
    code = "payload_too_large"

    def __init__(self, *, limit: int, what: str = "request body") -> None:
        super().__init__(
            message=f"{what} is larger than the limit of {limit} bytes",
            details={"limit_bytes": limit},
        )


class UnsupportedMediaType(ModelportError):
    code = "unsupported_media_type"

    def __init__(self, *, expected: str) -> None:
        super().__init__(message=f"send the body as {expected}", details={"expected": expected})


class ValidationFailed(ModelportError):
    code = "validation_failed"

    def __init__(self, *, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message=message, details=details)


class ModelFailed(ValidationFailed):
    """The model itself raised on input that passed every check of its signature: a graph with a
    fixed batch size inside, a reshape that fits only some inputs, a model that cannot run on its
    device. The framework's reason goes to the caller, without paths."""

    code = "model_failed"

    def __init__(self, *, reason: str) -> None:
        super().__init__(
            message=f"the model failed on this input, which matches its signature ({reason})",
            details={"reason": reason},
        )


class TooManyRequests(ModelportError):
    code = "too_many_requests"

    def __init__(self, *, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message=message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class IntegrityError(ModelportError):
    code = "integrity_error"

    def __init__(self, *, what: str) -> None:
        super().__init__(
            message=f"refused to load {what}: its stored bytes do not match the recorded sha256",
        )


class Unavailable(ModelportError):
    code = "unavailable"

    def __init__(self, *, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message=message, details=details)
