"""``Client`` and ``AsyncClient``: the Python SDK of a Modelport server.

Both classes only *send*: every operation's method, path, query and body is built once in
``client/_calls.py``, and errors come back as the same classes the server raised
(``modelport.errors``), mapped in ``client/errors.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from modelport.client import _calls as calls
from modelport.client._calls import JSON, Call, DownloadSink
from modelport.client._datasets import AsyncDatasetsMixin, DatasetsMixin
from modelport.client._jobs import AsyncJobsMixin, JobsMixin
from modelport.client.errors import connection_failed
from modelport.errors import ModelExists

T = TypeVar("T")
PathLike = str | os.PathLike[str]
Paths = Sequence[PathLike] | PathLike


@contextmanager
def _reachable(url: str) -> Iterator[None]:
    """Turn transport failures (refused, DNS, timeout) into ConnectionFailed naming the URL."""
    try:
        yield
    except httpx.TransportError as exc:
        raise connection_failed(url, exc) from None


class _Base:
    def __init__(self, url: str | None, key: str | None, timeout: float) -> None:
        self.url = calls.default_url(url)
        self.key = calls.default_key(key)
        self._options: dict[str, Any] = {
            "base_url": self.url,
            "headers": calls.headers(self.key),
            "timeout": httpx.Timeout(timeout),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"  # never the key


class Client(JobsMixin, DatasetsMixin, _Base):
    """A synchronous client for one Modelport server.

    Usage::

        from modelport import Client
        with Client("http://127.0.0.1:8000", key="mp_...") as mp:
            mp.upload("iris", "model.onnx", manifest={"labels": ["a", "b", "c"]})
            mp.set_alias("iris", "production", 1)
            print(mp.predict("iris", [[5.1, 3.5, 1.4, 0.2]])["predictions"])

    ``url`` defaults to ``$MODELPORT_URL`` (else http://127.0.0.1:8000) and ``key`` to
    ``$MODELPORT_KEY``. Every method raises the ``modelport.errors`` class the server raised
    (``ModelNotFound``, ``PermissionDenied``...), or ``ConnectionFailed`` when no answer came back.
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, key, timeout)
        self._http = httpx.Client(transport=transport, **self._options)

    def _send(self, call: Call[T]) -> T:
        with ExitStack() as files, _reachable(self.url):
            response = self._http.send(self._http.build_request(**call.request_kwargs(files)))
        return call.finish(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- health and identity ------------------------------------------------------------------------
    def health(self) -> JSON:
        """Liveness: ``{"status": "ok"}`` when the process answers."""
        return self._send(calls.health())

    def ready(self) -> JSON:
        """Readiness (database and store reachable); raises Unavailable when not ready."""
        return self._send(calls.ready())

    def whoami(self) -> JSON:
        """The principal, role and key id of the key in use."""
        return self._send(calls.whoami())

    def metrics(self) -> str:
        """Prometheus metrics text (admin keys)."""
        return self._send(calls.metrics())

    # -- models -------------------------------------------------------------------------------------
    def create_model(self, name: str, description: str = "", tags: Sequence[str] | None = None) -> JSON:
        """Register a model; the caller becomes its owner. ModelExists if the name is taken."""
        return self._send(calls.create_model(name, description, tags))

    def list_models(
        self,
        prefix: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JSON:
        """A page ``{"items", "total", "limit", "offset"}`` of the models the caller may read."""
        return self._send(calls.list_models(prefix, tag, limit, offset))

    def get_model(self, name: str) -> JSON:
        """A model with its latest version, aliases and the caller's role."""
        return self._send(calls.get_model(name))

    def update_model(
        self,
        name: str,
        description: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> JSON:
        """Change the description and/or replace the tags (None leaves a field alone)."""
        return self._send(calls.update_model(name, description, tags))

    def delete_model(self, name: str, force: bool = False) -> None:
        """Delete a model; ``force`` also drops its aliases (owners)."""
        self._send(calls.delete_model(name, force))

    # -- versions -----------------------------------------------------------------------------------
    def upload(
        self,
        name: str,
        paths: Paths,
        manifest: Mapping[str, Any] | None = None,
        create: bool = True,
    ) -> JSON:
        """Upload files as a new version; with ``create`` the model is registered first if missing.

        The first file is the entrypoint unless the manifest names one. The server checks the files
        (no pickle, the model loads) before it stores anything.
        """
        files = calls.upload_paths(paths)
        if create:
            with suppress(ModelExists):
                self.create_model(name)
        return self._send(calls.upload(name, files, manifest))

    def list_versions(self, name: str, limit: int = 50, offset: int = 0) -> JSON:
        """A page of a model's versions, newest first."""
        return self._send(calls.list_versions(name, limit, offset))

    def get_version(self, name: str, version: int) -> JSON:
        """A version with its manifest and files."""
        return self._send(calls.get_version(name, version))

    def update_version(
        self,
        name: str,
        version: int,
        description: str | None = None,
        status: str | None = None,
    ) -> JSON:
        """Change a version's description or status (``ready`` or ``archived``)."""
        return self._send(calls.update_version(name, version, description, status))

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version no alias points to (owners)."""
        self._send(calls.delete_version(name, version))

    def lineage(self, name: str, version: int) -> list[JSON]:
        """The version, then its parent, grandparent... as far as the caller may read."""
        return self._send(calls.lineage(name, version))

    def report(self, name: str, version: int) -> JSON:
        """An optimized version's report: each figure beside its parent's, with the ratio."""
        return self._send(calls.report(name, version))

    def download(self, name: str, version: int, path: str, dest: PathLike) -> Path:
        """Stream one file of a version to ``dest`` (a file, or a folder to put it in); hash-checked."""
        sink = DownloadSink(Path(dest), path)
        try:
            with (
                _reachable(self.url),
                self._http.stream("GET", calls.file_path(name, version, path)) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                sink.start(response)
                for chunk in response.iter_bytes(1 << 20):
                    sink.write(chunk)
            return sink.finish()
        except BaseException:
            sink.abort()
            raise

    # -- aliases ------------------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> JSON:
        """Point ``alias`` at ``version`` (create or move, atomically)."""
        return self._send(calls.set_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        """Delete an alias."""
        self._send(calls.delete_alias(name, alias))

    def list_aliases(self, name: str) -> list[JSON]:
        """A model's aliases with the version each points to."""
        return self._send(calls.list_aliases(name))

    # -- inference ----------------------------------------------------------------------------------
    def predict(self, ref: str, inputs: Any) -> JSON:
        """Predict with ``name``, ``name:3`` or ``name@alias``.

        ``inputs`` is one example, a batch, or ``{input_name: array}`` (lists or numpy arrays). The
        answer has ``model``, ``version``, ``outputs`` and, when the manifest decodes, ``predictions``.
        """
        return self._send(calls.predict(ref, inputs))

    def predict_tensor(self, ref: str, array: Any) -> Any:
        """Predict with a numpy array sent as raw bytes; the primary output comes back as an array.

        No JSON on either side, the fastest way in and out for batches (``docs/api.md``, raw tensors).
        ``array`` is one example or a batch in one of float32, float64, float16, int8, int16, int32,
        int64, uint8 or bool; the answer is a read-only array over the response's bytes (after softmax
        or sigmoid, as the manifest says; no labels: ask ``predict`` for those)."""
        return self._send(calls.predict_tensor(ref, array))

    def infer_v2(self, name: str, inputs: Mapping[str, Any], version: int | None = None) -> JSON:
        """Open Inference Protocol V2 infer; ``inputs`` maps tensor names to arrays or lists."""
        return self._send(calls.infer_v2(name, inputs, version))

    # -- keys, permissions, audit -------------------------------------------------------------------
    def create_key(
        self,
        name: str,
        role: str = "member",
        expires_at: datetime | str | None = None,
        *,
        scopes: Mapping[str, Sequence[str] | None] | None = None,
        service_account: bool = False,
        rate_limit_rps: float | None = None,
        max_concurrent_jobs: int | None = None,
    ) -> JSON:
        """Create an API key for principal ``name``; the answer's ``key`` is shown only now.

        Admins create any key; anyone else only a key for themselves no wider than the key in use.
        ``scopes`` narrows it: ``{"actions": ["infer", "read"], "models": ["mnist", "team-a-*"]}``
        (actions: infer, read, write, admin). ``service_account`` marks a key for CI;
        ``rate_limit_rps`` and ``max_concurrent_jobs`` override the server's limits for this key.
        """
        return self._send(
            calls.create_key(name, role, expires_at, scopes, service_account, rate_limit_rps, max_concurrent_jobs)
        )

    def rotate_key(self, key_id: str, grace_s: float = 3600) -> JSON:
        """A new key with the same principal, rights and expiry (its ``key`` shown only now); the old
        one keeps working for ``grace_s`` seconds, then expires. Admins, or a key rotating itself."""
        return self._send(calls.rotate_key(key_id, grace_s))

    def list_keys(self, include_revoked: bool = False) -> list[JSON]:
        """API keys (admins): ids and prefixes, never the keys."""
        return self._send(calls.list_keys(include_revoked))

    def revoke_key(self, key_id: str) -> JSON:
        """Revoke a key; every server refuses it within about a second."""
        return self._send(calls.revoke_key(key_id))

    def set_permission(self, name: str, principal: str, role: str) -> dict[str, str]:
        """Give ``principal`` the role reader, writer or owner on a model; returns all roles."""
        return self._send(calls.set_permission(name, principal, role))

    def delete_permission(self, name: str, principal: str) -> dict[str, str]:
        """Remove a principal's role on a model; returns the roles left."""
        return self._send(calls.delete_permission(name, principal))

    def list_permissions(self, name: str) -> dict[str, str]:
        """``{principal: role}`` on a model."""
        return self._send(calls.list_permissions(name))

    def audit(
        self,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        before_id: int | None = None,
    ) -> list[JSON]:
        """Audit records, newest first (admins); ``action``/``target`` match as prefixes."""
        return self._send(calls.audit(limit, actor, action, target, before_id))


class AsyncClient(AsyncJobsMixin, AsyncDatasetsMixin, _Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited.

    Usage::

        from modelport import AsyncClient
        async with AsyncClient("http://127.0.0.1:8000", key="mp_...") as mp:
            await mp.upload("iris", "model.onnx")
            answer = await mp.predict("iris:1", [[5.1, 3.5, 1.4, 0.2]])
            print(answer["outputs"])

    Requests are built by the same functions as the sync client's, so the two never drift apart.
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, key, timeout)
        self._http = httpx.AsyncClient(transport=transport, **self._options)

    async def _send(self, call: Call[T]) -> T:
        with ExitStack() as files, _reachable(self.url):
            request = self._http.build_request(**call.request_kwargs(files))
            response = await self._http.send(request)
        return call.finish(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def health(self) -> JSON:
        return await self._send(calls.health())

    async def ready(self) -> JSON:
        return await self._send(calls.ready())

    async def whoami(self) -> JSON:
        return await self._send(calls.whoami())

    async def metrics(self) -> str:
        return await self._send(calls.metrics())

    async def create_model(self, name: str, description: str = "", tags: Sequence[str] | None = None) -> JSON:
        return await self._send(calls.create_model(name, description, tags))

    async def list_models(
        self,
        prefix: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JSON:
        return await self._send(calls.list_models(prefix, tag, limit, offset))

    async def get_model(self, name: str) -> JSON:
        return await self._send(calls.get_model(name))

    async def update_model(
        self,
        name: str,
        description: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> JSON:
        return await self._send(calls.update_model(name, description, tags))

    async def delete_model(self, name: str, force: bool = False) -> None:
        await self._send(calls.delete_model(name, force))

    async def upload(
        self,
        name: str,
        paths: Paths,
        manifest: Mapping[str, Any] | None = None,
        create: bool = True,
    ) -> JSON:
        """See :meth:`Client.upload`."""
        files = calls.upload_paths(paths)
        if create:
            with suppress(ModelExists):
                await self.create_model(name)
        return await self._send(calls.upload(name, files, manifest))

    async def list_versions(self, name: str, limit: int = 50, offset: int = 0) -> JSON:
        return await self._send(calls.list_versions(name, limit, offset))

    async def get_version(self, name: str, version: int) -> JSON:
        return await self._send(calls.get_version(name, version))

    async def update_version(
        self,
        name: str,
        version: int,
        description: str | None = None,
        status: str | None = None,
    ) -> JSON:
        return await self._send(calls.update_version(name, version, description, status))

    async def delete_version(self, name: str, version: int) -> None:
        await self._send(calls.delete_version(name, version))

    async def lineage(self, name: str, version: int) -> list[JSON]:
        return await self._send(calls.lineage(name, version))

    async def report(self, name: str, version: int) -> JSON:
        """See :meth:`Client.report`."""
        return await self._send(calls.report(name, version))

    async def download(self, name: str, version: int, path: str, dest: PathLike) -> Path:
        """See :meth:`Client.download`."""
        sink = DownloadSink(Path(dest), path)
        try:
            with _reachable(self.url):
                async with self._http.stream("GET", calls.file_path(name, version, path)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    sink.start(response)
                    async for chunk in response.aiter_bytes(1 << 20):
                        sink.write(chunk)
            return sink.finish()
        except BaseException:
            sink.abort()
            raise

    async def set_alias(self, name: str, alias: str, version: int) -> JSON:
        return await self._send(calls.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._send(calls.delete_alias(name, alias))

    async def list_aliases(self, name: str) -> list[JSON]:
        return await self._send(calls.list_aliases(name))

    async def predict(self, ref: str, inputs: Any) -> JSON:
        return await self._send(calls.predict(ref, inputs))

    async def predict_tensor(self, ref: str, array: Any) -> Any:
        return await self._send(calls.predict_tensor(ref, array))

    async def infer_v2(self, name: str, inputs: Mapping[str, Any], version: int | None = None) -> JSON:
        return await self._send(calls.infer_v2(name, inputs, version))

    async def create_key(
        self,
        name: str,
        role: str = "member",
        expires_at: datetime | str | None = None,
        *,
        scopes: Mapping[str, Sequence[str] | None] | None = None,
        service_account: bool = False,
        rate_limit_rps: float | None = None,
        max_concurrent_jobs: int | None = None,
    ) -> JSON:
        return await self._send(
            calls.create_key(name, role, expires_at, scopes, service_account, rate_limit_rps, max_concurrent_jobs)
        )

    async def rotate_key(self, key_id: str, grace_s: float = 3600) -> JSON:
        return await self._send(calls.rotate_key(key_id, grace_s))

    async def list_keys(self, include_revoked: bool = False) -> list[JSON]:
        return await self._send(calls.list_keys(include_revoked))

    async def revoke_key(self, key_id: str) -> JSON:
        return await self._send(calls.revoke_key(key_id))

    async def set_permission(self, name: str, principal: str, role: str) -> dict[str, str]:
        return await self._send(calls.set_permission(name, principal, role))

    async def delete_permission(self, name: str, principal: str) -> dict[str, str]:
        return await self._send(calls.delete_permission(name, principal))

    async def list_permissions(self, name: str) -> dict[str, str]:
        return await self._send(calls.list_permissions(name))

    async def audit(
        self,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        before_id: int | None = None,
    ) -> list[JSON]:
        return await self._send(calls.audit(limit, actor, action, target, before_id))
