"""The wire between a job's process and its worker: JSON both ways, never a pickle from the job.

One message per ``Connection.send_bytes``, orjson-encoded, at most ``MAX_MESSAGE_BYTES``::

    job -> worker   {"event": {"type": ..., ...}}                  not answered (many, small)
                    {"call": "<method>", "args": {...}}            answered {"ok": value} or
                                                                   {"error": {"code", "message"}}
                    {"outcome": {"status": "succeeded", "result": {...}}
                               | {"status": "failed", "error": "..."} | {"status": "stopped"}}   the last
    worker -> job   answers only

The worker checks every message against :data:`METHODS` (the method names, and each argument's name and
type, all of them present, no other); ``services.LocalServices`` then checks what they mean (paths inside
the job's folder, the trial is this sweep's, the owner may read or write). A message that is not such
JSON is a :class:`ProtocolError`: the worker kills the job's process and fails the job, and goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy.exc import SQLAlchemyError

from modelport.config import Settings
from modelport.errors import ModelportError
from modelport.jobs.events import clean_payload
from modelport.jobs.services import JobServices, LocalServices, Registration, TrialInfo, VersionInfo

log = logging.getLogger("modelport.worker")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_ERROR_CHARS = 1000
_JSON_OUT = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class ProtocolError(Exception):
    """The job's process sent something that is not a valid message; the job is failed."""


class ServiceError(ModelportError):
    """A call the worker refused or could not serve, raised in the job's process with its message."""

    code = "job_service_failed"

    def __init__(self, *, message: str, cause: str) -> None:
        super().__init__(message=message, details={"cause": cause})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job's process ended, as the worker records it."""

    status: Literal["succeeded", "failed", "stopped"]
    result: dict[str, Any] | None = None
    error: str | None = None


def public_message(exc: BaseException, settings: Settings) -> str:
    """What a caller may read about a failure: the message, without server paths."""
    text = exc.message if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"
    for path, shown in ((settings.home.resolve(), "$MODELPORT_HOME"), (settings.home, "$MODELPORT_HOME")):
        text = text.replace(str(path), shown)
    return text[:MAX_ERROR_CHARS]


# -- what may be asked ----------------------------------------------------------------------------------
Check = Callable[[Any], bool]


def _text(limit: int) -> Check:
    return lambda v: isinstance(v, str) and 0 < len(v) <= limit and "\x00" not in v


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31


def _mapping(v: Any) -> bool:
    return isinstance(v, dict)


_NAME, _PATH = _text(256), _text(4096)
METHODS: dict[str, dict[str, Check]] = {
    "fetch_dataset": {"name": _NAME},
    "resolve": {"ref": _NAME},
    "fetch_version": {"model": _NAME, "version": _count, "folder": _PATH},
    "training_data": {"model": _NAME, "version": _count},
    "registered_step": {"step": _count},
    "register": {
        "bundle": _PATH,
        "manifest": _mapping,
        "alias": _optional(_NAME),
        "transform": _optional(_mapping),
        "report": _optional(_mapping),
    },
    "set_alias": {"alias": _NAME, "version": _count},
    "trials": {},
    "register_trial": {"trial": _NAME, "alias": _optional(_NAME), "transform": _optional(_mapping)},
    "remove_trial_folders": {},
}
"""Every method a job may call, with its arguments. The job's owner, its id and its target model are
no arguments: the worker takes them from the claimed job."""
_PATH_ARGS = frozenset({"folder", "bundle"})


# -- the worker's side ------------------------------------------------------------------------------------
def receive(services: LocalServices, raw: bytes) -> bytes | Outcome | None:
    """Handle one message of the job: the answer to send back, the job's Outcome, or None (an event)."""
    message = parse(raw)
    if "event" in message:
        try:
            services.report(message["event"])
        except SQLAlchemyError as exc:  # a database hiccup: this event is lost, the job goes on
            log.warning("job %s: an event could not be stored (%s)", services.job.id, type(exc).__name__)
        return None
    if "outcome" in message:
        return outcome_of(message["outcome"])
    name, args = message["call"], message["args"]
    try:
        value = getattr(services, name)(**{k: Path(v) if k in _PATH_ARGS else v for k, v in args.items()})
    except ModelportError as exc:
        return _answer({"error": {"code": exc.code, "message": public_message(exc, services.settings)}})
    except Exception as exc:  # a database hiccup or a bug: this job fails, the worker goes on
        log.error("job %s: %s failed (%s)", services.job.id, name, type(exc).__name__)
        log.debug("job %s: %s traceback", services.job.id, name, exc_info=True)
        return _answer({"error": {"code": "internal", "message": f"the worker could not serve {name}"}})
    return _answer({"ok": _plain(value)})


def parse(raw: bytes) -> dict[str, Any]:
    """A message of the job, checked against the protocol; ProtocolError says what is wrong."""
    try:
        message: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("a message that is not JSON") from None
    keys = set(message) if isinstance(message, dict) else None
    if keys not in ({"event"}, {"outcome"}, {"call", "args"}):
        raise ProtocolError("a message is one of {event}, {call, args} or {outcome}")
    if keys == {"event"} and not isinstance(message["event"], dict):
        raise ProtocolError("an event must be a mapping")
    if keys != {"call", "args"}:
        return dict(message)
    name, args = message["call"], message["args"]
    if not isinstance(name, str) or name not in METHODS:
        raise ProtocolError(f"unknown method {str(name)[:40]!r}")
    expected = METHODS[name]
    if not isinstance(args, dict) or set(args) != set(expected):
        raise ProtocolError(f"{name} takes exactly the arguments {sorted(expected)}")
    for key, check in expected.items():
        if not check(args[key]):
            raise ProtocolError(f"{name}: argument {key} has the wrong type or size")
    return dict(message)


def outcome_of(raw: Any) -> Outcome:
    """The job's final word, checked: succeeded with a result, failed with an error, or stopped."""
    status = raw.get("status") if isinstance(raw, dict) else None
    if status == "succeeded" and isinstance(raw.get("result"), dict):
        return Outcome("succeeded", result=raw["result"])
    if status == "failed" and isinstance(raw.get("error"), str):
        return Outcome("failed", error=raw["error"][:MAX_ERROR_CHARS])
    if status == "stopped":
        return Outcome("stopped")
    raise ProtocolError("an outcome is succeeded with a result, failed with an error, or stopped")


def _answer(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message, default=str, option=_JSON_OUT)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- the job's side ---------------------------------------------------------------------------------------
class ServicesClient:
    """:class:`~modelport.jobs.services.JobServices` in the job's process: each call a JSON request to
    the worker, answered before it returns. Thread-safe (one message at a time)."""

    def __init__(self, conn: Connection, workdir: Path) -> None:
        self._conn = conn
        self.workdir = workdir
        self._lock = threading.Lock()

    def _send(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message, default=str, option=_JSON_OUT)
        if len(data) > MAX_MESSAGE_BYTES:
            raise ServiceError(message="a message to the worker is too large", cause="size")
        self._conn.send_bytes(data)

    def _call(self, method: str, /, **args: Any) -> Any:
        with self._lock:
            self._send({"call": method, "args": args})
            answer = orjson.loads(self._conn.recv_bytes())
        if "error" in answer:
            raise ServiceError(message=str(answer["error"]["message"]), cause=str(answer["error"]["code"]))
        return answer["ok"]

    def report(self, event: dict[str, Any]) -> None:
        payload = {"type": str(event.get("type") or "log")[:32], **clean_payload(event)}
        with self._lock:
            self._send({"event": payload})

    def finish(self, outcome: Outcome) -> None:
        """Send the job's outcome: its last message."""
        body: dict[str, Any] = {"status": outcome.status}
        if outcome.status == "succeeded":
            body["result"] = outcome.result or {}
        elif outcome.status == "failed":
            body["error"] = outcome.error or "failed"
        with self._lock:
            self._send({"outcome": body})

    def fetch_dataset(self, name: str) -> Path:
        return Path(self._call("fetch_dataset", name=name))

    def resolve(self, ref: str) -> VersionInfo:
        return VersionInfo(**self._call("resolve", ref=ref))

    def fetch_version(self, model: str, version: int, folder: Path) -> None:
        self._call("fetch_version", model=model, version=version, folder=str(folder))

    def training_data(self, model: str, version: int) -> dict[str, Any]:
        data: dict[str, Any] = self._call("training_data", model=model, version=version)
        return data

    def registered_step(self, step: int) -> VersionInfo | None:
        found = self._call("registered_step", step=step)
        return None if found is None else VersionInfo(**found)

    def register(
        self,
        bundle: Path,
        manifest: dict[str, Any],
        *,
        alias: str | None = None,
        transform: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
    ) -> Registration:
        args = {"bundle": str(bundle), "manifest": manifest, "alias": alias, "transform": transform, "report": report}
        return Registration(**self._call("register", **args))

    def set_alias(self, alias: str, version: int) -> None:
        self._call("set_alias", alias=alias, version=version)

    def trials(self) -> list[TrialInfo]:
        return [TrialInfo(**t) for t in self._call("trials")]

    def register_trial(
        self, trial: str, *, alias: str | None = None, transform: dict[str, Any] | None = None
    ) -> Registration:
        return Registration(**self._call("register_trial", trial=trial, alias=alias, transform=transform))

    def remove_trial_folders(self) -> None:
        self._call("remove_trial_folders")


if TYPE_CHECKING:  # both sides keep to the one contract: mypy checks them against JobServices

    def _contract(local: LocalServices, remote: ServicesClient) -> list[JobServices]:
        return [local, remote]
