#!/usr/bin/env bash
# Here, before a device run: the wheels Modelport needs that the GPU machine's image lacks (it has
# Python 3.12, torch, numpy, onnx, onnxruntime, httpx, anyio, typer, rich, pytest... and no package
# index), into .whl/ (ignored by git through .git/info/exclude). Versions as in this checkout's .venv.
#   bash bench/gpu/fetch_wheels.sh        then, with the device tool:
#   run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=480)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 -d .whl \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 \
  python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.54.0 httptools==0.9.0 \
  SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 orjson==3.13.0 pysimdjson==7.0.2 skops==0.16.0 \
  prettytable==3.18.0 wcwidth==0.9.4 python-multipart==0.0.34 cryptography==50.0.2 cffi==2.1.1 \
  pycparser==3.12 pytest==9.2.0 pytest-asyncio==1.5.0 opentelemetry-api==1.45.2 typing_extensions==4.16.0 \
  annotated-doc==0.0.7
du -sh .whl
