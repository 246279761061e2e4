"""Optimize jobs over the real app and a real worker: a digits MLP trained for real, then pruned,
fine-tuned, exported, quantized and distilled; reports, lineage, validation, tenants and resume."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelport.jobs.worker import Worker
from tests.conftest import TrainedMnist, upload
from tests.integration.test_jobs_api import as_member, ctx_of, digits_spec

DIGITS = {"source": "builtin", "name": "digits"}


def teacher_spec(name: str = "digits") -> dict[str, Any]:
    spec = digits_spec(name, epochs=8)
    spec["model"] = {"layers": [{"dense": 64, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]}
    spec["register"] = {"model": name}
    return spec


def run_jobs(app: FastAPI, count: int = 1) -> None:
    worker = Worker(ctx_of(app).settings)
    try:
        for _ in range(count):
            assert worker.step()
    finally:
        worker.close()


async def trained(client: httpx.AsyncClient, app: FastAPI, headers: dict[str, str] | None = None) -> None:
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": teacher_spec()}, headers=headers)
    assert r.status_code == 201, r.text
    run_jobs(app)


async def optimize(
    client: httpx.AsyncClient, app: FastAPI, steps: list[Any], headers: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    spec = {"source": "digits:1", "data": DIGITS, "steps": steps, "evaluation": {"repeats": 3}, **extra}
    r = await client.post("/v1/jobs", json={"kind": "optimize", "spec": spec}, headers=headers)
    assert r.status_code == 201, r.text
    run_jobs(app)
    job = (await client.get(f"/v1/jobs/{r.json()['id']}", headers=headers)).json()
    assert job["status"] == "succeeded", job["error"]
    result: dict[str, Any] = job["result"]
    return result


async def report(client: httpx.AsyncClient, ref: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    name, number = ref.split(":")
    r = await client.get(f"/v1/models/{name}/versions/{number}/report", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_prune_finetune_export_quantize_chain_registers_one_measured_version_per_step(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await trained(client, app)
    steps = [
        {"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
        {"finetune": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.001}}},
        "export",
        {"quantize": {"method": "int8_static", "calibration_samples": 500}},
    ]
    result = await optimize(client, app, steps, register={"alias": "candidate"})
    assert result["versions"] == ["digits:2", "digits:3", "digits:4", "digits:5"]
    pruned, tuned, exported, quantized = [await report(client, ref) for ref in result["versions"]]
    # pruning: 80% of the weights are zero, stored sparse (smaller on disk), lineage names the parent
    assert pruned["parent"] == "digits:1" and pruned["transform"]["kind"] == "prune"
    nonzero = pruned["figures"]["nonzero_parameters"]
    assert nonzero["ratio"] < 0.3 and pruned["figures"]["parameters"]["ratio"] == 1.0
    assert pruned["figures"]["model_bytes"]["ratio"] < 0.5
    assert 0.0 <= pruned["figures"]["accuracy"]["value"] <= 1.0 and "delta_points" in pruned["figures"]["accuracy"]
    assert {"latency_ms_b1", "latency_ms_b256"} <= set(pruned["figures"])
    # fine-tuning keeps the zeros and recovers accuracy on the pruned network
    assert tuned["parent"] == "digits:2"
    assert tuned["figures"]["nonzero_parameters"]["value"] <= nonzero["value"]
    assert tuned["figures"]["accuracy"]["value"] >= pruned["figures"]["accuracy"]["value"] - 0.02
    # export: ONNX checked against torch; quantize: int8 kernels (the graph's own bytes weigh more on a
    # model this small than on LeNet, where bench/paper_tables.py measures the 0.27x floor)
    assert exported["figures"]["model_bytes"]["value"] > 0
    assert exported["transform"]["max_abs_diff"] < 1e-4
    assert quantized["quantization"]["method"] == "int8_static"
    assert quantized["figures"]["model_bytes"]["ratio"] < 0.6
    assert abs(quantized["figures"]["accuracy"]["delta_points"]) < 3.0
    versions = {v: (await client.get(f"/v1/models/digits/versions/{v}")).json() for v in range(2, 6)}
    assert [versions[v]["format"] for v in range(2, 6)] == ["torch", "torch", "onnx", "onnx"]
    assert versions[5]["aliases"] == ["candidate"]
    chain = (await client.get("/v1/models/digits/versions/5/lineage")).json()["chain"]
    assert [c["version"] for c in chain] == [5, 4, 3, 2, 1]
    assert [c.get("transform", {}).get("kind") for c in chain[:4]] == ["quantize", "export", "finetune", "prune"]
    for v in range(2, 6):  # every step's result is servable
        answer = await client.post(f"/v1/models/digits:{v}/predict", json={"inputs": [[0.5] * 64]})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "step",
    [
        {"prune": {"method": "random", "sparsity": [0.5, 0.7], "finetune": {"epochs": 1}}},
        {"prune": {"method": "taylor", "sparsity": 0.6, "scope": "layer", "calibration_samples": 300}},
        {"prune": {"method": "structured", "amount": 0.5}},
        {"quantize": {"method": "int8_dynamic", "storage": "compressed"}},
        {"quantize": {"method": "int4_weight", "block_size": 32}},
        {"quantize": {"method": "int8_dynamic"}},
    ],
    ids=["random-schedule", "taylor", "structured", "int8-compressed", "int4", "int8-dynamic"],
)
async def test_each_method_produces_a_servable_version_with_a_report(
    client: httpx.AsyncClient, app: FastAPI, step: dict[str, Any]
) -> None:
    await trained(client, app)
    result = await optimize(client, app, [step])
    body = await report(client, result["versions"][0])
    figures = body["figures"]
    kind = next(iter(step))
    if kind == "prune" and step["prune"]["method"] == "structured":
        assert figures["parameters"]["ratio"] < 0.6  # a smaller dense network, really
    elif kind == "prune":
        target = step["prune"]["sparsity"]
        target = target[-1] if isinstance(target, list) else target
        assert figures["nonzero_parameters"]["ratio"] < 1.0 - target + 0.05
    else:
        assert figures["model_bytes"]["ratio"] < 0.4
    assert figures["accuracy"]["value"] > 0.2  # above chance (0.1); quality floors are measured in bench/
    answer = await client.post(f"/v1/models/{result['versions'][0]}/predict", json={"inputs": [[0.25] * 64]})
    assert answer.status_code == 200, answer.text


async def test_distillation_reports_the_teacher_and_a_hard_label_control(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await trained(client, app)
    step = {
        "distill": {
            "student": {"layers": [{"dense": 16, "activation": "relu"}, {"dense": 10}]},
            "train": {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}},
            "temperature": 3.0,
            "alpha": 0.7,
        }
    }
    result = await optimize(client, app, [step])
    body = await report(client, result["versions"][0])
    assert {"teacher", "student", "control"} <= set(body)
    assert body["student"]["accuracy"] == pytest.approx(body["figures"]["accuracy"]["value"], abs=0.02)
    assert body["figures"]["parameters"]["ratio"] < 0.3
    version = (await client.get(f"/v1/models/digits/versions/{result['versions'][0].split(':')[1]}")).json()
    steps = [{k: v for k, v in step.items() if v is not None} for step in version["manifest"]["postprocess"]]
    assert steps == [{"softmax": True}, {"argmax": True}]  # the student ends in logits; serving decodes them


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"steps": [{"prune": {"sparsity": 1.5}}]}, "sparsity"),
        ({"steps": [{"prune": {"method": "structured", "sparsity": 0.5}}]}, "amount"),
        ({"steps": [{"quantize": {}}, {"prune": {"sparsity": 0.5}}]}, "quantize must be the last step"),
        ({"steps": [{"quantize": {"method": "int8_static", "storage": "compressed"}}]}, "int8_dynamic"),
        ({"steps": [{"prune": {"sparsity": [0.8, 0.5]}}]}, "rise"),
        ({"steps": [{"prune": {"sparsity": 0.5}, "finetune": {}}]}, "exactly one"),
        ({"steps": []}, "steps"),
        ({"steps": ["export"], "source": "Bad Ref!"}, "invalid"),
        ({"steps": ["export"], "bogus": 1}, "bogus"),
    ],
)
async def test_an_invalid_optimize_spec_is_a_400_naming_the_field(
    client: httpx.AsyncClient, spec: dict[str, Any], words: str
) -> None:
    full = {"source": "digits:1", "data": DIGITS, **spec}
    r = await client.post("/v1/jobs", json={"kind": "optimize", "spec": full})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"], r.text


async def test_a_source_the_submitter_cannot_read_is_a_404_and_a_plain_version_has_no_report(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await trained(client, app)
    bob = await as_member(client, "bob")
    spec = {"source": "digits:1", "data": DIGITS, "steps": ["export"], "register": {"model": "bobs"}}
    r = await client.post("/v1/jobs", json={"kind": "optimize", "spec": spec}, headers=bob)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = await client.get("/v1/models/digits/versions/1/report")
    assert r.status_code == 404 and r.json()["error"]["code"] == "report_not_found"
    r = await client.get("/v1/models/digits/versions/1/report", headers=bob)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_without_data_the_job_uses_what_the_source_was_trained_on(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await trained(client, app)
    first = await optimize(client, app, [{"prune": {"sparsity": 0.5}}])
    spec = {"source": first["versions"][0], "steps": [{"quantize": {"method": "int8_dynamic"}}]}
    r = await client.post("/v1/jobs", json={"kind": "optimize", "spec": spec})  # no data: the chain's
    assert r.status_code == 201, r.text
    run_jobs(app)
    job = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    body = await report(client, job["result"]["versions"][0])
    assert body["evaluation"]["examples"] == (await report(client, first["versions"][0]))["evaluation"]["examples"]


async def test_without_data_an_uploaded_source_fails_with_a_clear_message(
    client: httpx.AsyncClient, app: FastAPI, mnist_model: TrainedMnist
) -> None:
    assert (await upload(client, "uploaded", mnist_model.onnx_path, mnist_model.manifest)).status_code == 201
    r = await client.post("/v1/jobs", json={"kind": "optimize", "spec": {"source": "uploaded:1", "steps": ["export"]}})
    run_jobs(app)
    job = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    assert job["status"] == "failed" and "optimize needs data" in job["error"]


async def test_an_uploaded_manifest_cannot_carry_a_report(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    forged = {**mnist_model.manifest, "report": {"figures": {"accuracy": {"value": 1.0}}}}
    r = await upload(client, "forged", mnist_model.onnx_path, forged)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_manifest", r.text
    assert "report" in r.json()["error"]["message"]
    assert (await client.get("/v1/models/forged/versions")).json()["total"] == 0


async def test_an_onnx_only_version_can_be_quantized_but_not_pruned(client: httpx.AsyncClient, app: FastAPI) -> None:
    await trained(client, app)
    exported = await optimize(client, app, [{"quantize": {"method": "int8_dynamic"}}])
    spec = {"source": exported["versions"][0], "data": DIGITS, "steps": [{"prune": {"sparsity": 0.5}}]}
    r = await client.post("/v1/jobs", json={"kind": "optimize", "spec": spec})
    assert r.status_code == 201
    run_jobs(app)
    job = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    assert job["status"] == "failed" and "needs a torch network" in job["error"]


async def test_a_retried_job_skips_the_steps_it_already_registered(client: httpx.AsyncClient, app: FastAPI) -> None:
    """A worker that died after registering step 1 must not register it again on the retry."""
    from sqlalchemy import update

    from modelport.jobs.tables import Job

    await trained(client, app)
    steps = [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "int8_dynamic"}}]
    first = await optimize(client, app, steps)
    assert first["versions"] == ["digits:2", "digits:3"]
    job_id = (await client.get("/v1/jobs", params={"kind": "optimize"})).json()["items"][0]["id"]
    # Simulate the crash: the job is queued again, as the reaper does for a dead worker's job.
    with ctx_of(app).db.write() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="queued", result=None, worker=None))
    run_jobs(app)
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["versions"] == ["digits:2", "digits:3"]
    assert (await client.get("/v1/models/digits/versions")).json()["total"] == 3
