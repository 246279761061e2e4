"""RSW-1 entries for Modelport, loaded by the shared harness through EXTRA_SYSTEMS (see run.sh).

Executed by the harness's systems.py with ``SYSTEMS``, ``fill``, ``SRC`` and ``WORK`` in scope. Every
Modelport entry keeps authentication ON: each request carries an API key (sent by the patched post.lua
from the ``<body>.headers`` sidecar that prep.py writes), so the key check, the permission check and the
schema check are all on the measured path.
"""
# ruff: noqa: F821, C408  (names provided by the harness; dict() matches the harness's own entries)

import os

HERE = os.path.dirname(os.path.abspath(os.environ["EXTRA_SYSTEMS"]))
KEY = "mp_rsw1-benchmark-key-0123456789abcdefghijklmno"
ENV = {"MODELPORT_HOME": f"{WORK}/modelport/home", "MODELPORT_ADMIN_KEY": KEY, "MODELPORT_JOB_WORKERS": "0"}
PREP = [["{venv}/bin/python", f"{HERE}/prep.py"]]
CMD = ["{venv}/bin/modelport", "serve", "--port", "{port}", "--log-level", "warning"]
COMMON = dict(venv="modelport", cmd=CMD, env=ENV, start_timeout=120, artifact="models/mlp.onnx uploaded as mlp:1")

SYSTEMS.update(
    {
        "floor_raw": dict(
            label="HTTP floor, raw bytes: uvicorn+Starlette, no model",
            venv="base",
            port=28204,
            cmd=[
                "{venv}/bin/uvicorn",
                "floor_raw_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--workers",
                "1",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=HERE,
            url="http://127.0.0.1:{port}/predict",
            body="mpraw",
            resp="probs",
            constant=True,
            artifact="none",
            settings="reads the raw float32 body into a numpy array (X-Tensor-Shape), returns orjson constants",
        ),
        "modelport": dict(
            label="Modelport /v1 predict (JSON)",
            port=28201,
            prep=PREP,
            url="http://127.0.0.1:{port}/v1/models/mlp/predict",
            body="mp",
            resp="modelport",
            settings="1 process, API key + read permission checked per request, dynamic batching (idle: no wait)",
            **COMMON,
        ),
        "modelport_raw": dict(
            label="Modelport /v1 predict (raw tensors in, JSON out)",
            port=28202,
            prep=PREP,
            url="http://127.0.0.1:{port}/v1/models/mlp/predict",
            body="mpraw",
            resp="modelport",
            settings="as modelport; body = float32 bytes, X-Tensor-Shape header",
            **COMMON,
        ),
        "modelport_v2": dict(
            label="Modelport V2 infer",
            port=28203,
            prep=PREP,
            url="http://127.0.0.1:{port}/v2/models/mlp/infer",
            body="mpv2",
            resp="v2",
            settings="as modelport; Open Inference Protocol V2 JSON",
            **COMMON,
        ),
    }
)

# The harness prepares TorchServe's model store and both configs in plain torchserve's prep step only;
# give the batching entry the same step, so that it runs when selected without plain torchserve.
if "torchserve" in SYSTEMS and "torchserve_batch" in SYSTEMS:
    SYSTEMS["torchserve_batch"].setdefault("prep", SYSTEMS["torchserve"].get("prep", []))
