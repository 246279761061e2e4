"""Fixtures shared by the format tests: turn an inspection into the manifest the platform would write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from modelport.formats.base import Inspection
from modelport.store.bundle import Manifest, ManifestInput

ToManifest = Callable[..., Manifest]


def _to_manifest(fmt: str, entrypoint: str, inspection: Inspection, given: ManifestInput | None = None) -> Manifest:
    given = given or ManifestInput()
    assert inspection.signature is not None
    extra: dict[str, Any] = {"architecture": given.architecture} if given.architecture else {}
    return Manifest.model_validate(
        {"format": fmt, "entrypoint": entrypoint, "signature": inspection.signature.model_dump(), **extra}
    )


@pytest.fixture
def to_manifest() -> ToManifest:
    """``to_manifest(format, entrypoint, inspection, given=None)`` -> the version's Manifest."""
    return _to_manifest
