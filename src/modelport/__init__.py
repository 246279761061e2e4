"""Modelport: a self-hosted model-as-a-service platform.

``from modelport import Client`` gives the SDK. The SDK classes load on first use (module
``__getattr__``), so ``import modelport`` stays light for the server, the CLI and workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from modelport.client import AsyncClient, Client

_LAZY = {"Client": "modelport.client", "AsyncClient": "modelport.client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
