"""Patch a COPY of the shared RSW-1 harness so it can send per-body request headers.

post.lua and verify.py read an optional ``<body file>.headers`` sidecar ("Name: value" lines); verify.py
also learns the ``modelport`` answer shape ({"outputs": [[...]]}). Peers' bodies have no sidecar, so
their runs are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

LUA_HEADERS = """
local hf = io.open(os.getenv("BODY_FILE") .. ".headers", "rb")
if hf then
  for line in hf:lines() do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then wrk.headers[k] = v end
  end
  hf:close()
end
"""

VERIFY_POST = """def post(url, body, timeout=30, body_file=None):
    headers = {"Content-Type": "application/json"}
    import os as _os
    if body_file and _os.path.exists(body_file + ".headers"):
        for line in open(body_file + ".headers"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip()] = v.strip()
    req = urllib.request.Request(url, data=body, headers=headers)"""


def patch(folder: Path) -> None:
    lua = folder / "post.lua"
    text = lua.read_text()
    if "hf:lines()" not in text:
        anchor = 'wrk.headers["Content-Type"] = "application/json"\n'
        lua.write_text(text.replace(anchor, anchor + LUA_HEADERS))
    verify = folder / "verify.py"
    text = verify.read_text()
    if "body_file=None" not in text:
        original = (
            "def post(url, body, timeout=30):\n"
            '    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})'
        )
        text = text.replace(original, VERIFY_POST)
        text = text.replace("status, raw = post(url, body)", "status, raw = post(url, body, body_file=body_file)")
        text = text.replace(
            '    if fmt == "list":',
            '    if fmt == "modelport":     # {"outputs": [[..10..], ...], "model", "version"}\n'
            '        return np.asarray(obj["outputs"], dtype=np.float64)\n    if fmt == "list":',
        )
        verify.write_text(text)
    for needle, path in (("hf:lines()", lua), ("body_file=None", verify), ('"modelport"', verify)):
        if needle not in path.read_text():
            sys.exit(f"patch failed: {path.name} does not contain {needle!r} (harness changed?)")


if __name__ == "__main__":
    patch(Path(sys.argv[1]))
