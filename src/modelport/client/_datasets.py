"""The dataset methods of ``Client`` and ``AsyncClient`` (mixed in; requests built in ``_calls.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from modelport.client import _calls as calls
from modelport.client._calls import JSON

if TYPE_CHECKING:
    from modelport.client._calls import Call

T = TypeVar("T")


def _file(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    if not out.is_file():
        raise FileNotFoundError(f"no such file: {out}")
    return out


class DatasetsMixin:
    """Datasets for :class:`~modelport.client.Client`: upload, list, get, delete."""

    if TYPE_CHECKING:

        def _send(self, call: Call[T]) -> T: ...

    def upload_dataset(
        self,
        name: str,
        path: str | os.PathLike[str],
        format: str | None = None,
        description: str = "",
    ) -> JSON:
        """Upload a training data file (.npz, .csv or .parquet; ``format`` overrides the suffix).

        Train on it with ``data: {source: dataset, name: NAME}``. Only you (and admins) can see it;
        an NPZ whose arrays need pickle is refused.
        """
        return self._send(calls.upload_dataset(name, _file(path), format, description))

    def list_datasets(self, limit: int = 50, offset: int = 0) -> JSON:
        """A page of your datasets (an admin's: all), by name: ``{"items", "total", "limit", "offset"}``."""
        return self._send(calls.list_datasets(limit, offset))

    def get_dataset(self, name: str) -> JSON:
        """A dataset: format, filename, sha256, size_bytes, owner, created_at, description."""
        return self._send(calls.get_dataset(name))

    def delete_dataset(self, name: str) -> None:
        """Delete a dataset (its owner or an admin); jobs already holding a copy are not affected."""
        self._send(calls.delete_dataset(name))


class AsyncDatasetsMixin:
    """The asyncio twin of :class:`DatasetsMixin`, for :class:`~modelport.client.AsyncClient`."""

    if TYPE_CHECKING:

        async def _send(self, call: Call[T]) -> T: ...

    async def upload_dataset(
        self,
        name: str,
        path: str | os.PathLike[str],
        format: str | None = None,
        description: str = "",
    ) -> JSON:
        """See :meth:`DatasetsMixin.upload_dataset`."""
        return await self._send(calls.upload_dataset(name, _file(path), format, description))

    async def list_datasets(self, limit: int = 50, offset: int = 0) -> JSON:
        return await self._send(calls.list_datasets(limit, offset))

    async def get_dataset(self, name: str) -> JSON:
        return await self._send(calls.get_dataset(name))

    async def delete_dataset(self, name: str) -> None:
        await self._send(calls.delete_dataset(name))
