"""Optimization end to end: a real server, real worker processes, a digits MLP trained for real.

The CLI's ``optimize`` follows a prune -> finetune -> quantize chain and prints the reports, ``compare``
puts two versions side by side, the SDK builds and follows a spec, and a worker killed with SIGKILL
in the middle of a chain's fine-tuning leaves the job to the next worker, which skips the step already
registered (no version twice) and resumes the fine-tuning from its last checkpoint.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from modelport.client import Client, optimize_spec
from tests.e2e.test_jobs_e2e import KEY, Server, api_server, cli, digits, jobs_server, start_worker, stop

__all__ = ["jobs_server"]  # the module-scoped server fixture, shared with the jobs tests
DIGITS = {"source": "builtin", "name": "digits"}


def trained(mp: Client, name: str) -> None:
    job = mp.train({**digits(name, epochs=6, units=64), "register": {"model": name}}, follow=True)
    assert job["status"] == "succeeded", job["error"]


def test_cli_optimize_follows_the_chain_prints_reports_and_compare_shows_ratios(jobs_server: Server) -> None:
    with Client(jobs_server[0], KEY) as mp:
        trained(mp, "opt-cli")
    run = cli(
        jobs_server,
        "optimize",
        "opt-cli:1",
        "--prune",
        "0.8",
        "--finetune",
        "1",
        "--quantize",
        "int8",
        "--alias",
        "small",
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "registered opt-cli:2, opt-cli:3, opt-cli:4" in out
    assert "opt-cli:2 (prune of opt-cli:1)" in out and "opt-cli:4 (quantize of opt-cli:3)" in out
    assert "non-zero parameters" in out and "latency batch 256 (ms)" in out
    compared = json.loads(cli(jobs_server, "--json", "compare", "opt-cli:1", "opt-cli:4").stdout)
    rows = {r["figure"]: r for r in compared["figures"]}
    assert rows["size on disk (bytes)"]["opt-cli:4"] < rows["size on disk (bytes)"]["opt-cli:1"]
    assert float(rows["size on disk (bytes)"]["B/A"]) < 1.0
    siblings = json.loads(cli(jobs_server, "--json", "compare", "opt-cli:2", "opt-cli:3").stdout)
    rows = {r["figure"]: r for r in siblings["figures"]}  # 3's report measured 2 as its parent
    assert rows["latency batch 256 (ms)"]["opt-cli:2"] > 0 and rows["accuracy"]["B/A"] is not None
    table = cli(jobs_server, "compare", "opt-cli:1", "opt-cli:2")
    assert table.returncode == 0 and "accuracy" in table.stdout
    with Client(jobs_server[0], KEY) as mp:
        assert mp.get_model("opt-cli")["aliases"] == {"small": 4}
        assert [c["version"] for c in mp.lineage("opt-cli", 4)] == [4, 3, 2, 1]
    refused = cli(jobs_server, "optimize", "opt-cli:1", "--builtin", "digits", "--dataset", "x")
    assert refused.returncode == 2 and "at most one" in refused.stderr
    refused = cli(jobs_server, "optimize", "opt-cli:1")
    assert refused.returncode == 2 and "--prune" in refused.stderr
    bad = cli(jobs_server, "optimize", "opt-cli:1", "--prune", "1.5", "--builtin", "digits")
    assert bad.returncode != 0 and "sparsity" in bad.stderr


def test_sdk_optimize_spec_follow_and_report(jobs_server: Server) -> None:
    with Client(jobs_server[0], KEY) as mp:
        trained(mp, "opt-sdk")
        spec = optimize_spec("opt-sdk:1", data=DIGITS, prune=0.5, prune_method="structured", quantize="int4")
        seen: list[dict[str, Any]] = []
        job = mp.optimize(spec, follow=True, on_event=seen.append)
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["versions"] == ["opt-sdk:2", "opt-sdk:3"]
        assert [e["status"] for e in seen if e["type"] == "step"] == ["running", "registered"] * 2
        structured = mp.report("opt-sdk", 2)
        assert structured["figures"]["parameters"]["ratio"] < 0.6
        assert mp.report("opt-sdk", 3)["quantization"]["method"] == "int4_weight"
        assert mp.predict("opt-sdk:3", [[0.5] * 64])["version"] == 3


def test_kill_9_mid_chain_resumes_from_the_last_step_and_its_checkpoint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with api_server(home) as url, Client(url, KEY) as mp:
        worker = start_worker(home, tmp_path / "w1.log")
        try:
            trained(mp, "opt-kill")
            long_finetune = {"finetune": {"epochs": 400, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.001}}}
            spec = {"source": "opt-kill:1", "data": DIGITS, "steps": [{"prune": {"sparsity": 0.5}}, long_finetune]}
            job = mp.submit_job("optimize", spec)
            for event in mp.job_events(job["id"]):
                if event["type"] == "checkpoint":  # step 1 is registered; step 2 has saved an epoch
                    break
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(timeout=10) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
        assert mp.list_versions("opt-kill")["total"] == 2  # the pruned version, registered before the kill
        # The next worker takes the job over after the heartbeat timeout and finds step 1 done.
        shortened = mp.get_job(job["id"])
        assert shortened["status"] in ("running", "queued")
        second = start_worker(home, tmp_path / "w2.log")
        try:
            messages: list[str] = []
            for event in mp.job_events(job["id"]):
                if event["type"] == "log":
                    messages.append(str(event.get("message")))
                if any("resumed at epoch" in m for m in messages):
                    mp.cancel_job(job["id"])  # step 2 would run 400 epochs; resuming is what this test checks
                    break
            assert "step 1 (prune) was registered as opt-kill:2" in messages  # not run again
            resumed = next(m for m in messages if "resumed at epoch" in m)
            assert int(resumed.split("epoch ")[1].split(",")[0]) >= 2  # from the checkpoint, not from the start
            deadline = time.monotonic() + 60
            final = mp.get_job(job["id"])
            while final["status"] not in ("cancelled", "succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
                final = mp.get_job(job["id"])
            assert final["status"] == "cancelled"
            assert final["attempts"] == 2
        finally:
            assert stop(second) == 0
        assert mp.list_versions("opt-kill")["total"] == 2  # step 1 was not registered again
