#!/usr/bin/env bash
# RSW-1 with Modelport beside the peers, in one run:
#   bench/serving/run.sh                              floors + Modelport (JSON, raw, V2)
#   SYSTEMS="floor floor_orjson modelport modelport_raw modelport_v2 torchserve_batch mlserver_batch" bench/serving/run.sh
#   SYSTEMS="" PEERS=all bench/serving/run.sh        every peer of the shared harness too (~40 min)
# Then many_models.py (20 models; a memory budget that fits 5; MANY_MODELS=0 skips it), and report.py
# prints the table and every floor of issue 5.
# The shared harness (../shared/bench/serving) is copied to $WORK/h/bench/serving and patched there (per-body
# request headers, Modelport's answer shape); Modelport runs from this checkout's .venv.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$REPO/../shared/bench/serving}
export WORK=${WORK:-${TMPDIR:-/tmp}/serving-bench}
mkdir -p "$WORK/venvs"
# the harness finds MNIST at ../../data/mnist from its own folder: keep that layout in the copy
H="$WORK/h/bench/serving"
rm -rf "$WORK/h" && mkdir -p "$WORK/h/bench" && cp -r "$SHARED" "$H" && ln -s "$(cd "$SHARED/../../data" && pwd)" "$WORK/h/data"
"$REPO/.venv/bin/python" "$HERE/patch_harness.py" "$H"
ln -sfn "$REPO/.venv" "$WORK/venvs/modelport"
export EXTRA_SYSTEMS="$HERE/modelport_systems.py"
ALL_PEERS="mlflow bentoml bentoml_batch litserve litserve_batch ray ray_batch mlserver mlserver_batch torchserve torchserve_batch"
# each Modelport system runs right after the floor it is held to (orjson -> modelport, raw -> modelport_raw):
# this VM's speed drifts by 15-50% over minutes, and a ratio is only as good as the two cells' closeness in time
if [ "${PEERS:-}" = all ]; then
  export SYSTEMS="floor floor_orjson modelport floor_raw modelport_raw modelport_v2 $ALL_PEERS"
else
  export SYSTEMS=${SYSTEMS:-floor floor_orjson modelport floor_raw modelport_raw modelport_v2}
fi
export RESULTS_DIR=${RESULTS_DIR:-$WORK/results}
# report.py labels a result this run did not write (RESULTS_DIR keeps earlier runs' files) with its time
export RUN_STARTED=$(date +%s)
export INPROC=${INPROC:-0}
# setup.sh builds only the venvs the chosen systems use (base always: it runs the floors and train.py)
NEEDED=$(python3 - <<PY
import os
venvs = {"floor": "base", "floor_orjson": "base", "mlflow": "mlflow", "bentoml": "bentoml", "bentoml_batch": "bentoml",
         "litserve": "litserve", "litserve_batch": "litserve", "ray": "ray", "ray_batch": "ray", "mlserver": "mlserver",
         "mlserver_batch": "mlserver", "torchserve": "torchserve", "torchserve_batch": "torchserve"}
print(" ".join(sorted({"base"} | {venvs[s] for s in os.environ["SYSTEMS"].split() if s in venvs})))
PY
)
(cd "$H" && ./setup.sh $NEEDED)
(cd "$H" && sed -i 's|^./setup.sh$|true  # venvs built by bench/serving/run.sh|' run_all.sh && ./run_all.sh)
# the 20-model floors (MANY_MODELS=0 skips them), under the harness's CPU lock like its own timed runs
if [ "${MANY_MODELS:-1}" = 1 ]; then
  flock "${LOCK:-${TMPDIR:-/tmp}/serving-bench/cpu.lock}" "$REPO/.venv/bin/python" "$HERE/many_models.py" \
    --work "$WORK" --json "$RESULTS_DIR/many_models.json" | tee "$RESULTS_DIR/many_models.log"
else
  rm -f "$RESULTS_DIR/many_models.json"
fi
"$REPO/.venv/bin/python" "$HERE/report.py" "$RESULTS_DIR" "$SHARED/results-2026-11-28" | tee "$RESULTS_DIR/MODELPORT.md"
