"""The one request builder behind ``Client`` and ``AsyncClient``.

Each public SDK operation is a function here that returns a :class:`Call`: method, path, query,
body and how to decode the answer. The two client classes only *send* a Call (sync or async), so the
wire format of every operation lives in exactly one place (the httpx pattern).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
import orjson

from modelport import __version__
from modelport.client.errors import error_from_response
from modelport.errors import IntegrityError

T = TypeVar("T")
JSON = dict[str, Any]
Decode = Literal["json", "text", "empty", "response"]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"modelport-python/{__version__}"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP exchange: what to send, and how to turn a 2xx answer into the SDK's return value."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    body: bytes | None = None
    """A body, already encoded: JSON (orjson, so numpy arrays go straight through) unless ``content_type``."""
    content_type: str = "application/json"
    headers: Mapping[str, str] | None = None
    """Request headers beyond the client's own (a raw tensor's shape and dtype)."""
    form: Mapping[str, str] | None = None
    upload: Sequence[Path] = ()
    """Files sent as multipart ``file`` parts; opened only while sending."""
    decode: Decode = "json"
    pick: Callable[[Any], T] = field(default=_same)

    def request_kwargs(self, files: ExitStack) -> dict[str, Any]:
        """Arguments for ``httpx.Client.build_request``; upload files are opened into ``files``."""
        kwargs: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.params:
            kwargs["params"] = {k: _query(v) for k, v in self.params.items() if v is not None}
        if self.body is not None:
            kwargs["content"] = self.body
            kwargs["headers"] = {"content-type": self.content_type, **(self.headers or {})}
        if self.upload:
            handles: list[tuple[str, tuple[str, IO[bytes], str]]] = []
            for path in self.upload:
                handle = files.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
                handles.append(("file", (path.name, handle, "application/octet-stream")))
            kwargs["files"] = handles
            kwargs["data"] = dict(self.form or {})
        return kwargs

    def finish(self, response: httpx.Response) -> T:
        """The decoded answer, or the mapped ModelportError for a 4xx/5xx."""
        if response.status_code >= 400:
            raise error_from_response(response)
        if self.decode == "empty":
            return self.pick(None)
        if self.decode == "text":
            return self.pick(response.text)
        if self.decode == "response":
            return self.pick(response)
        return self.pick(orjson.loads(response.content) if response.content else None)


def _query(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def seg(value: str | int) -> str:
    """One URL path segment, fully escaped: a name can never add or climb path segments."""
    return quote(str(value), safe="")


def encode_json(value: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars serialize natively, other array-likes via ``tolist``."""
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_SERIALIZE_NUMPY)


def _fallback(value: Any) -> Any:
    if hasattr(value, "tolist"):  # non-contiguous numpy arrays, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def _items(data: Any) -> Any:
    return data["items"]


def default_url(url: str | None) -> str:
    """The base URL: the argument, else ``MODELPORT_URL``, else the local default (read per client)."""
    chosen = (url or os.environ.get("MODELPORT_URL") or DEFAULT_URL).rstrip("/")
    if not chosen.startswith(("http://", "https://")):
        raise ValueError(f"invalid Modelport URL {chosen!r}: use http://host:port or https://...")
    return chosen


def default_key(key: str | None) -> str | None:
    return key if key is not None else (os.environ.get("MODELPORT_KEY") or None)


def headers(key: str | None) -> dict[str, str]:
    out = {"user-agent": USER_AGENT, "accept": "application/json"}
    if key:
        out["authorization"] = f"Bearer {key}"
    return out


# -- health and identity ---------------------------------------------------------------------------
def health() -> Call[JSON]:
    return Call("GET", "/healthz")


def ready() -> Call[JSON]:
    return Call("GET", "/readyz")


def whoami() -> Call[JSON]:
    return Call("GET", "/v1/whoami")


def metrics() -> Call[str]:
    return Call("GET", "/metrics", decode="text")


# -- models ----------------------------------------------------------------------------------------
def create_model(name: str, description: str, tags: Sequence[str] | None) -> Call[JSON]:
    body = {"name": name, "description": description, "tags": list(tags or [])}
    return Call("POST", "/v1/models", body=encode_json(body))


def list_models(prefix: str | None, tag: str | None, limit: int, offset: int) -> Call[JSON]:
    params = {"prefix": prefix, "tag": tag, "limit": limit, "offset": offset}
    return Call("GET", "/v1/models", params=params)


def get_model(name: str) -> Call[JSON]:
    return Call("GET", f"/v1/models/{seg(name)}")


def update_model(name: str, description: str | None, tags: Sequence[str] | None) -> Call[JSON]:
    body: JSON = {}
    if description is not None:
        body["description"] = description
    if tags is not None:
        body["tags"] = list(tags)
    return Call("PATCH", f"/v1/models/{seg(name)}", body=encode_json(body))


def delete_model(name: str, force: bool) -> Call[None]:
    params = {"force": True} if force else None
    return Call("DELETE", f"/v1/models/{seg(name)}", params=params, decode="empty")


# -- versions --------------------------------------------------------------------------------------
def upload_paths(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
) -> list[Path]:
    """The files of an upload as existing paths (FileNotFoundError before any byte is sent)."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out = [Path(p) for p in items]
    if not out:
        raise ValueError("upload needs at least one file")
    for path in out:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    return out


def upload(name: str, files: list[Path], manifest: Mapping[str, Any] | None) -> Call[JSON]:
    form = {"manifest": encode_json(dict(manifest)).decode()} if manifest else None
    return Call("POST", f"/v1/models/{seg(name)}/versions", form=form, upload=files)


def list_versions(name: str, limit: int, offset: int) -> Call[JSON]:
    params = {"limit": limit, "offset": offset}
    return Call("GET", f"/v1/models/{seg(name)}/versions", params=params)


def get_version(name: str, version: int) -> Call[JSON]:
    return Call("GET", f"/v1/models/{seg(name)}/versions/{seg(version)}")


def update_version(name: str, version: int, description: str | None, status: str | None) -> Call[JSON]:
    body = {k: v for k, v in {"description": description, "status": status}.items() if v is not None}
    return Call(
        "PATCH",
        f"/v1/models/{seg(name)}/versions/{seg(version)}",
        body=encode_json(body),
    )


def delete_version(name: str, version: int) -> Call[None]:
    return Call("DELETE", f"/v1/models/{seg(name)}/versions/{seg(version)}", decode="empty")


def lineage(name: str, version: int) -> Call[list[JSON]]:
    path = f"/v1/models/{seg(name)}/versions/{seg(version)}/lineage"
    return Call("GET", path, pick=lambda data: data["chain"])


def report(name: str, version: int) -> Call[JSON]:
    return Call("GET", f"/v1/models/{seg(name)}/versions/{seg(version)}/report")


def file_path(name: str, version: int, path: str) -> str:
    """The download URL path; the bundle path keeps its '/' but every segment is escaped."""
    return f"/v1/models/{seg(name)}/versions/{seg(version)}/files/{quote(path, safe='/')}"


# -- aliases and permissions -----------------------------------------------------------------------
def set_alias(name: str, alias: str, version: int) -> Call[JSON]:
    body = encode_json({"version": version})
    return Call("PUT", f"/v1/models/{seg(name)}/aliases/{seg(alias)}", body=body)


def delete_alias(name: str, alias: str) -> Call[None]:
    return Call("DELETE", f"/v1/models/{seg(name)}/aliases/{seg(alias)}", decode="empty")


def list_aliases(name: str) -> Call[list[JSON]]:
    return Call("GET", f"/v1/models/{seg(name)}/aliases", pick=_items)


def _permissions(data: Any) -> dict[str, str]:
    return dict(data["permissions"])


def set_permission(name: str, principal: str, role: str) -> Call[dict[str, str]]:
    path = f"/v1/models/{seg(name)}/permissions/{seg(principal)}"
    return Call("PUT", path, body=encode_json({"role": role}), pick=_permissions)


def delete_permission(name: str, principal: str) -> Call[dict[str, str]]:
    path = f"/v1/models/{seg(name)}/permissions/{seg(principal)}"
    return Call("DELETE", path, pick=_permissions)


def list_permissions(name: str) -> Call[dict[str, str]]:
    return Call("GET", f"/v1/models/{seg(name)}/permissions", pick=_permissions)


# -- inference -------------------------------------------------------------------------------------
def predict(ref: str, inputs: Any) -> Call[JSON]:
    return Call("POST", f"/v1/models/{seg(ref)}/predict", body=encode_json({"inputs": inputs}))


RAW_MEDIA_TYPE = "application/octet-stream"
RAW_DTYPES = ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool")
"""What the server takes as a raw tensor (``serving/protocols/raw.py``)."""


def predict_tensor(ref: str, value: Any) -> Call[Any]:
    """The raw-tensor predict: the array's bytes out, the primary output's bytes back (no JSON)."""
    import numpy as np  # only raw-tensor callers pay for numpy

    arr = np.asarray(value)
    if arr.dtype.name not in RAW_DTYPES:
        raise TypeError(f"a raw tensor must be one of {', '.join(RAW_DTYPES)}, not {arr.dtype.name}")
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))  # the wire is little-endian
    headers = {
        "x-tensor-shape": ",".join(str(d) for d in arr.shape),
        "x-tensor-dtype": arr.dtype.name,
        "accept": RAW_MEDIA_TYPE,
    }
    path = f"/v1/models/{seg(ref)}/predict"
    return Call(
        "POST", path, body=arr.tobytes(), content_type=RAW_MEDIA_TYPE, headers=headers, decode="response", pick=_tensor
    )


def _tensor(response: httpx.Response) -> Any:
    import numpy as np

    shape = tuple(int(d) for d in response.headers["x-tensor-shape"].split(",") if d)
    dtype = np.dtype(response.headers["x-tensor-dtype"]).newbyteorder("<")
    return np.frombuffer(response.content, dtype=dtype).reshape(shape)


V2_DATATYPES = {
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
}


def v2_tensor(name: str, value: Any) -> JSON:
    """One V2 input tensor from a numpy array or nested list (datatype from the array's dtype)."""
    import numpy as np  # the SDK stays light to import; only V2 callers pay for numpy

    arr = np.asarray(value)
    if arr.dtype.kind in "USO":
        datatype, data = "BYTES", [str(x) for x in arr.reshape(-1).tolist()]
        return {
            "name": name,
            "shape": list(arr.shape),
            "datatype": datatype,
            "data": data,
        }
    if arr.dtype.name not in V2_DATATYPES:
        raise TypeError(f"input {name!r}: dtype {arr.dtype} has no V2 datatype")
    flat = np.ascontiguousarray(arr.reshape(-1))
    return {
        "name": name,
        "shape": list(arr.shape),
        "datatype": V2_DATATYPES[arr.dtype.name],
        "data": flat,
    }


def infer_v2(name: str, inputs: Mapping[str, Any], version: int | None) -> Call[JSON]:
    path = f"/v2/models/{seg(name)}"
    if version is not None:
        path += f"/versions/{seg(version)}"
    body = {"inputs": [v2_tensor(k, v) for k, v in inputs.items()]}
    return Call("POST", path + "/infer", body=encode_json(body))


# -- keys and audit --------------------------------------------------------------------------------
def create_key(
    name: str,
    role: str,
    expires_at: datetime | str | None,
    scopes: Mapping[str, Sequence[str] | None] | None = None,
    service_account: bool = False,
    rate_limit_rps: float | None = None,
    max_concurrent_jobs: int | None = None,
) -> Call[JSON]:
    body: JSON = {"name": name, "role": role}
    if isinstance(expires_at, datetime):
        # A naive datetime means local time (Python's rule); the server needs an explicit zone.
        body["expires_at"] = (expires_at if expires_at.tzinfo else expires_at.astimezone()).isoformat()
    elif expires_at is not None:
        body["expires_at"] = expires_at
    if scopes is not None:
        body["scopes"] = {k: list(v) if v is not None else None for k, v in scopes.items()}
    if service_account:
        body["service_account"] = True
    if rate_limit_rps is not None:
        body["rate_limit_rps"] = rate_limit_rps
    if max_concurrent_jobs is not None:
        body["max_concurrent_jobs"] = max_concurrent_jobs
    return Call("POST", "/v1/keys", body=encode_json(body))


def rotate_key(key_id: str, grace_s: float) -> Call[JSON]:
    return Call("POST", f"/v1/keys/{seg(key_id)}/rotate", body=encode_json({"grace_s": grace_s}))


def list_keys(include_revoked: bool) -> Call[list[JSON]]:
    params = {"include_revoked": True} if include_revoked else None
    return Call("GET", "/v1/keys", params=params, pick=_items)


def revoke_key(key_id: str) -> Call[JSON]:
    return Call("DELETE", f"/v1/keys/{seg(key_id)}")


def audit(
    limit: int,
    actor: str | None,
    action: str | None,
    target: str | None,
    before_id: int | None,
) -> Call[list[JSON]]:
    params = {
        "limit": limit,
        "actor": actor,
        "action": action,
        "target": target,
        "before_id": before_id,
    }
    return Call("GET", "/v1/audit", params=params, pick=_items)


# -- downloads -------------------------------------------------------------------------------------
class DownloadSink:
    """Writes a streamed file next to its destination, checks its sha256, then renames it in place.

    A partial or tampered download never lands at ``dest``: the bytes go to a temp file that is
    renamed only after the hash the server announced (``X-Content-SHA256``) matches.
    """

    def __init__(self, dest: Path, bundle_path: str) -> None:
        self.dest = dest / Path(bundle_path).name if dest.is_dir() else dest
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dest.with_name(f".{self.dest.name}.part")
        self.hash = hashlib.sha256()
        self.handle: IO[bytes] | None = None
        self.expected: str | None = None

    def start(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise error_from_response(response)
        self.expected = response.headers.get("x-content-sha256")
        self.handle = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish/abort

    def write(self, chunk: bytes) -> None:
        assert self.handle is not None
        self.hash.update(chunk)
        self.handle.write(chunk)

    def finish(self) -> Path:
        assert self.handle is not None
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if self.expected and self.expected != self.hash.hexdigest():
            self.tmp.unlink(missing_ok=True)
            raise IntegrityError(what=f"download of {self.dest.name}")
        os.replace(self.tmp, self.dest)
        return self.dest

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


# -- jobs ------------------------------------------------------------------------------------------
def submit_job(kind: str, spec: Mapping[str, Any]) -> Call[JSON]:
    return Call("POST", "/v1/jobs", body=encode_json({"kind": kind, "spec": dict(spec)}))


def list_jobs(status: str | None, kind: str | None, parent: str | None, limit: int, offset: int) -> Call[JSON]:
    params = {"status": status, "kind": kind, "parent": parent, "limit": limit, "offset": offset}
    return Call("GET", "/v1/jobs", params=params)


def get_job(job_id: str) -> Call[JSON]:
    return Call("GET", f"/v1/jobs/{seg(job_id)}")


def cancel_job(job_id: str) -> Call[JSON]:
    return Call("POST", f"/v1/jobs/{seg(job_id)}/cancel")


def job_logs(job_id: str, tail: int | None) -> Call[str]:
    return Call("GET", f"/v1/jobs/{seg(job_id)}/logs", params={"tail": tail}, decode="text")


# -- datasets --------------------------------------------------------------------------------------
def upload_dataset(name: str, path: Path, format: str | None, description: str) -> Call[JSON]:
    form = {"name": name, "description": description}
    if format:
        form["format"] = format
    return Call("POST", "/v1/datasets", form=form, upload=[path])


def list_datasets(limit: int, offset: int) -> Call[JSON]:
    return Call("GET", "/v1/datasets", params={"limit": limit, "offset": offset})


def get_dataset(name: str) -> Call[JSON]:
    return Call("GET", f"/v1/datasets/{seg(name)}")


def delete_dataset(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/datasets/{seg(name)}", decode="empty")
