"""The SDK keeps its own copy of the raw-tensor wire constants (it does not import the server's
serving code); they must say what the server takes."""

from __future__ import annotations

from modelport.client import _calls
from modelport.serving.protocols import raw


def test_the_sdk_sends_exactly_the_dtypes_and_media_type_the_server_takes() -> None:
    assert set(_calls.RAW_DTYPES) == set(raw.DTYPES)
    assert raw.MEDIA_TYPE == _calls.RAW_MEDIA_TYPE
