"""The job methods of ``Client`` and ``AsyncClient`` (mixed in; requests built in ``_calls.py``), and
the decoder of a job's server-sent event stream.

Kept beside ``client.py`` so that module stays readable; the two classes list these mixins first.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx
import orjson

from modelport.client import _calls as calls
from modelport.client._calls import JSON, seg
from modelport.client.errors import ConnectionFailed, connection_failed, error_from_response

if TYPE_CHECKING:
    from modelport.client._calls import Call

T = TypeVar("T")
OnEvent = Callable[[JSON], Any]

JOB_TERMINAL = ("succeeded", "failed", "cancelled")
SpecLike = Mapping[str, Any] | str | os.PathLike[str]
"""A job spec: a mapping, or the path of a YAML or JSON file holding one."""


def job_spec(spec: SpecLike) -> dict[str, Any]:
    """The spec as a dict: a mapping as is, a file read and parsed (YAML; JSON is YAML too)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    import yaml  # only callers that pass files pay for the YAML parser

    path = Path(spec)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a job spec (a mapping)")
    return data


QUANTIZE_SHORT = {
    "int8": "int8_static",
    "int8-static": "int8_static",
    "int8-dynamic": "int8_dynamic",
    "int4": "int4_weight",
}


def optimize_spec(
    source: str,
    *,
    data: Mapping[str, Any] | None = None,
    prune: float | None = None,
    prune_method: str = "magnitude",
    scope: str = "global",
    finetune_epochs: int = 0,
    quantize: str | None = None,
    export: bool = False,
    model: str | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """An optimize spec from a few options, in the order prune -> finetune -> export -> quantize.

    ``data`` defaults (on the server) to what the source version was trained on. ``prune`` is the
    target sparsity (or, with ``prune_method="structured"``, the fraction of neurons
    removed); ``quantize`` is ``int8`` (static, calibrated), ``int8-dynamic`` or ``int4`` (weight-only).
    The server checks the result like any spec, so a wrong option comes back as a 400 naming it.
    """
    steps: list[dict[str, Any]] = []
    if prune is not None:
        key = "amount" if prune_method == "structured" else "sparsity"
        options: dict[str, Any] = {"method": prune_method, key: prune}
        if prune_method != "structured":
            options["scope"] = scope
        steps.append({"prune": options})
    if finetune_epochs:
        steps.append({"finetune": {"epochs": finetune_epochs}})
    if export:
        steps.append({"export": {}})
    if quantize is not None:
        steps.append({"quantize": {"method": QUANTIZE_SHORT.get(quantize, quantize)}})
    register = {k: v for k, v in (("model", model), ("alias", alias)) if v is not None}
    spec: dict[str, Any] = {"source": source, "steps": steps, "register": register}
    if data is not None:
        spec["data"] = dict(data)
    return spec


class EventFollower:
    """Following one job's server-sent events: decodes the lines, remembers the last event number so
    a dropped connection resumes where it stopped (``Last-Event-ID``), and knows when the job ended.

    Both clients loop the same way: open ``path`` with ``headers()``, ``feed`` every line, and on a
    dropped connection (or a stream that closed before the job ended) wait ``retry_delay()``.
    """

    def __init__(self, url: str, job_id: str, last_event_id: int | None, *, retries: int = 5) -> None:
        self.url = url
        self.path = f"/v1/jobs/{seg(job_id)}/events"
        self.last = last_event_id
        self.done = False
        self.retries = retries
        self._left = retries
        self._data: list[str] = []

    def headers(self) -> dict[str, str]:
        out = {"accept": "text/event-stream"}
        if self.last is not None:
            out["last-event-id"] = str(self.last)
        return out

    def feed(self, line: str) -> JSON | None:
        """Take one line; return the event that a blank line completes, else None."""
        if line.startswith(":"):
            return None
        if line:
            name, _, value = line.partition(":")
            if name == "data":
                self._data.append(value.removeprefix(" "))
            return None
        data, self._data = self._data, []
        if not data:
            return None
        event: JSON = orjson.loads("\n".join(data))
        self.last, self._left = int(event.get("seq", self.last or 0)), self.retries
        self.done = event.get("type") == "status" and event.get("status") in JOB_TERMINAL
        return event

    def retry_delay(self, exc: httpx.TransportError | None) -> float:
        """Seconds to wait before reconnecting; ConnectionFailed once the retries are used up."""
        if self._left <= 0:
            if exc is not None:
                raise connection_failed(self.url, exc)
            raise ConnectionFailed(url=self.url, reason="the event stream kept closing before the job ended")
        self._left -= 1
        return 0.5 * (self.retries - self._left)


class JobsMixin:
    """Jobs for :class:`~modelport.client.Client`: submit, follow, list, cancel, logs."""

    url: str
    _http: httpx.Client

    if TYPE_CHECKING:

        def _send(self, call: Call[T]) -> T: ...

    def submit_job(self, kind: str, spec: SpecLike) -> JSON:
        """Queue a job of ``kind`` (``train`` or ``sweep``); the server validates the spec first."""
        return self._send(calls.submit_job(kind, job_spec(spec)))

    def train(self, spec: SpecLike, follow: bool = False, on_event: OnEvent | None = None) -> JSON:
        """Submit a training spec (a mapping or a YAML/JSON file path).

        With ``follow``, wait until the job ends (each event goes to ``on_event``) and return the
        final job: check its ``status``; ``result`` names the registered ``model`` and ``version``.
        """
        return self._submit_and_follow("train", spec, follow, on_event)

    def sweep(self, spec: SpecLike, follow: bool = False, on_event: OnEvent | None = None) -> JSON:
        """Submit a sweep; with ``follow`` wait for it. Its ``result["trials"]`` is ranked best first."""
        return self._submit_and_follow("sweep", spec, follow, on_event)

    def optimize(self, spec: SpecLike, follow: bool = False, on_event: OnEvent | None = None) -> JSON:
        """Submit an optimize spec (see :func:`optimize_spec` to build one from a few options).

        Each step registers a new version; with ``follow`` the final job's ``result["versions"]``
        lists them in order, and :meth:`report` shows what each one gained against its parent.
        """
        return self._submit_and_follow("optimize", spec, follow, on_event)

    def _submit_and_follow(self, kind: str, spec: SpecLike, follow: bool, on_event: OnEvent | None) -> JSON:
        job = self.submit_job(kind, spec)
        if not follow:
            return job
        for event in self.job_events(job["id"]):
            if on_event is not None:
                on_event(event)
        return self.get_job(job["id"])

    def list_jobs(
        self,
        status: str | None = None,
        kind: str | None = None,
        parent: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JSON:
        """A page of the caller's jobs (an admin's: all), newest first; ``parent`` lists a sweep's trials."""
        return self._send(calls.list_jobs(status, kind, parent, limit, offset))

    def get_job(self, job_id: str) -> JSON:
        """A job: ``status``, ``progress`` (epoch, step, loss, metrics, throughput, eta_s), ``result``, ``error``."""
        return self._send(calls.get_job(job_id))

    def cancel_job(self, job_id: str) -> JSON:
        """Cancel a queued job at once, or ask a running one to stop (it ends ``cancelled``)."""
        return self._send(calls.cancel_job(job_id))

    def job_logs(self, job_id: str, tail: int | None = None) -> str:
        """The job's events as text lines (the last ``tail`` ones)."""
        return self._send(calls.job_logs(job_id, tail))

    def job_events(self, job_id: str, last_event_id: int | None = None) -> Iterator[JSON]:
        """The job's events, past then live, until it ends; a dropped connection resumes by itself."""
        follow = EventFollower(self.url, job_id, last_event_id)
        while not follow.done:
            try:
                with self._http.stream("GET", follow.path, headers=follow.headers()) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    for line in response.iter_lines():
                        event = follow.feed(line)
                        if event is not None:
                            yield event
            except httpx.TransportError as exc:
                time.sleep(follow.retry_delay(exc))
                continue
            if not follow.done:
                time.sleep(follow.retry_delay(None))


class AsyncJobsMixin:
    """The asyncio twin of :class:`JobsMixin`, for :class:`~modelport.client.AsyncClient`."""

    url: str
    _http: httpx.AsyncClient

    if TYPE_CHECKING:

        async def _send(self, call: Call[T]) -> T: ...

    async def submit_job(self, kind: str, spec: SpecLike) -> JSON:
        return await self._send(calls.submit_job(kind, job_spec(spec)))

    async def train(self, spec: SpecLike, follow: bool = False, on_event: OnEvent | None = None) -> JSON:
        """See :meth:`JobsMixin.train`."""
        return await self._submit_and_follow("train", spec, follow, on_event)

    async def sweep(self, spec: SpecLike, follow: bool = False, on_event: OnEvent | None = None) -> JSON:
        return await self._submit_and_follow("sweep", spec, follow, on_event)

    async def optimize(self, spec: SpecLike, follow: bool = False, on_event: OnEvent | None = None) -> JSON:
        """See :meth:`JobsMixin.optimize`."""
        return await self._submit_and_follow("optimize", spec, follow, on_event)

    async def _submit_and_follow(self, kind: str, spec: SpecLike, follow: bool, on_event: OnEvent | None) -> JSON:
        job = await self.submit_job(kind, spec)
        if not follow:
            return job
        async for event in self.job_events(job["id"]):
            if on_event is not None:
                on_event(event)
        return await self.get_job(job["id"])

    async def list_jobs(
        self,
        status: str | None = None,
        kind: str | None = None,
        parent: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JSON:
        return await self._send(calls.list_jobs(status, kind, parent, limit, offset))

    async def get_job(self, job_id: str) -> JSON:
        return await self._send(calls.get_job(job_id))

    async def cancel_job(self, job_id: str) -> JSON:
        return await self._send(calls.cancel_job(job_id))

    async def job_logs(self, job_id: str, tail: int | None = None) -> str:
        return await self._send(calls.job_logs(job_id, tail))

    async def job_events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[JSON]:
        """See :meth:`JobsMixin.job_events`."""
        follow = EventFollower(self.url, job_id, last_event_id)
        while not follow.done:
            try:
                async with self._http.stream("GET", follow.path, headers=follow.headers()) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    async for line in response.aiter_lines():
                        event = follow.feed(line)
                        if event is not None:
                            yield event
            except httpx.TransportError as exc:
                await anyio.sleep(follow.retry_delay(exc))
                continue
            if not follow.done:
                await anyio.sleep(follow.retry_delay(None))
