"""The Python SDK: ``Client`` (sync) and ``AsyncClient`` over one request builder.

Errors come back as the classes of ``modelport.errors``; :class:`ConnectionFailed` means no answer.
"""

from modelport.client._jobs import optimize_spec
from modelport.client.client import AsyncClient, Client
from modelport.client.errors import ConnectionFailed

__all__ = ["AsyncClient", "Client", "ConnectionFailed", "optimize_spec"]
