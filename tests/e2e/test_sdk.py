"""The SDK (Client, AsyncClient) against a real server on a port: every operation, and errors as classes."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from modelport import AsyncClient, Client
from modelport.client import ConnectionFailed
from modelport.client.errors import build_error
from modelport.errors import (
    AliasInUse,
    InvalidInput,
    InvalidName,
    ModelExists,
    ModelFailed,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ValidationFailed,
    VersionNotFound,
)
from tests.integration.test_model_failures import write_batch_of_one

if TYPE_CHECKING:
    from tests.e2e.conftest import TinyOnnx

Server = tuple[str, str]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_health_ready_whoami_metrics(admin: Client) -> None:
    assert admin.health() == {"status": "ok"}
    assert admin.ready()["status"] == "ready"
    me = admin.whoami()
    assert (me["principal"], me["role"]) == ("admin", "admin")
    assert "modelport" in admin.metrics()


def test_models_create_list_get_update_delete(admin: Client) -> None:
    created = admin.create_model("sdk-crud", description="first", tags=["vision"])
    assert created["name"] == "sdk-crud"
    assert created["tags"] == ["vision"]
    admin.create_model("sdk-crud-other")

    page = admin.list_models(prefix="sdk-crud")
    assert {m["name"] for m in page["items"]} == {"sdk-crud", "sdk-crud-other"}
    assert page["total"] == 2
    assert [m["name"] for m in admin.list_models(prefix="sdk-crud", limit=1, offset=1)["items"]] == ["sdk-crud-other"]
    assert [m["name"] for m in admin.list_models(tag="vision")["items"]] == ["sdk-crud"]

    updated = admin.update_model("sdk-crud", description="second", tags=["a", "b"])
    assert (updated["description"], sorted(updated["tags"])) == ("second", ["a", "b"])
    assert admin.get_model("sdk-crud")["description"] == "second"

    admin.delete_model("sdk-crud")
    with pytest.raises(ModelNotFound) as info:
        admin.get_model("sdk-crud")
    assert "sdk-crud" in str(info.value)
    assert info.value.details["model"] == "sdk-crud"


def test_errors_map_back_to_the_same_classes(admin: Client, live_server: Server) -> None:
    with pytest.raises(InvalidName):
        admin.create_model("Not A Name")
    admin.create_model("sdk-errors")
    with pytest.raises(ModelExists):
        admin.create_model("sdk-errors")
    with pytest.raises(VersionNotFound):
        admin.get_version("sdk-errors", 7)
    with pytest.raises(NotFound):  # the parent class catches every 404
        admin.get_model("no-such-model")
    with Client(live_server[0], key=None) as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_models()
    with Client(live_server[0], key="mp_" + "x" * 40) as wrong, pytest.raises(Unauthenticated):
        wrong.whoami()


def test_a_model_failure_is_model_failed_with_its_reason(admin: Client, tmp_path: Path) -> None:
    admin.upload("sdk-one", write_batch_of_one(tmp_path))
    assert admin.predict("sdk-one", [[1.0, 2.0, 3.0, 4.0]])["outputs"] == [[1.0, 2.0, 3.0, 4.0]]
    with pytest.raises(ValidationFailed) as raised:  # the 422 family
        admin.predict("sdk-one", [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    assert type(raised.value) is ModelFailed
    assert "cannot be reshaped" in raised.value.details["reason"]


def test_unknown_codes_fall_back_to_the_status_class() -> None:
    exc = build_error("brand_new_not_found", "gone", {"x": 1}, 404)
    assert type(exc) is NotFound
    assert (exc.message, exc.details) == ("gone", {"x": 1})
    assert type(build_error("model_not_found", "m", None, 404)) is ModelNotFound


def test_unreachable_server_is_connection_failed() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with Client(url, key="k", timeout=2.0) as mp, pytest.raises(ConnectionFailed) as info:
        mp.health()
    assert str(info.value).startswith(f"cannot reach Modelport at {url}")


def test_keys_create_list_revoke(admin: Client, live_server: Server) -> None:
    created = admin.create_key("sdk-bob")
    assert created["key"].startswith("mp_")
    assert created["role"] == "member"
    with Client(live_server[0], created["key"]) as bob:
        assert bob.whoami()["principal"] == "sdk-bob"
        with pytest.raises(PermissionDenied):
            bob.list_keys()
    listed = {k["id"]: k for k in admin.list_keys()}
    assert listed[created["id"]]["prefix"] == created["key"][:11]
    assert all("key" not in k for k in listed.values())

    revoked = admin.revoke_key(created["id"])
    assert revoked["revoked_at"] is not None
    assert created["id"] not in {k["id"] for k in admin.list_keys()}
    assert created["id"] in {k["id"] for k in admin.list_keys(include_revoked=True)}
    # The server drops its key cache on a revoke in its own process, so a fresh client sees it at once.
    with Client(live_server[0], created["key"]) as bob, pytest.raises(Unauthenticated):
        bob.whoami()


def test_key_expiry_accepts_naive_and_aware_datetimes(admin: Client) -> None:
    naive = admin.create_key("sdk-temp", expires_at=datetime.now() + timedelta(hours=1))  # naive on purpose
    aware = admin.create_key("sdk-temp", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert naive["expires_at"] is not None
    assert aware["expires_at"] is not None


def test_permissions_hide_and_protect_models(admin: Client, live_server: Server) -> None:
    admin.create_model("sdk-private")
    with Client(live_server[0], admin.create_key("sdk-carol")["key"]) as carol:
        with pytest.raises(ModelNotFound):  # not readable: it does not exist for carol
            carol.get_model("sdk-private")
        assert "sdk-private" not in {m["name"] for m in carol.list_models()["items"]}

        assert admin.set_permission("sdk-private", "sdk-carol", "reader")["sdk-carol"] == "reader"
        assert carol.get_model("sdk-private")["your_role"] == "reader"
        with pytest.raises(PermissionDenied):
            carol.update_model("sdk-private", description="mine now")
        assert admin.list_permissions("sdk-private")["sdk-carol"] == "reader"

        assert "sdk-carol" not in admin.delete_permission("sdk-private", "sdk-carol")
        with pytest.raises(ModelNotFound):
            carol.get_model("sdk-private")


def test_audit_records_writes(admin: Client) -> None:
    admin.create_model("sdk-audited")
    entries = admin.audit(action="model.create", target="sdk-audited")
    assert [e["target"] for e in entries] == ["sdk-audited"]
    assert entries[0]["actor"] == "admin"
    assert len(admin.audit(limit=1)) == 1


def test_upload_predict_aliases_versions(admin: Client, tiny_onnx: TinyOnnx, tmp_path: Path) -> None:
    manifest = {"labels": ["a", "b", "c"], "postprocess": [{"softmax": True}, {"argmax": True}]}
    v1 = admin.upload("sdk-mlp", tiny_onnx.path, manifest=manifest)  # creates the model
    assert (v1["model"], v1["version"], v1["format"]) == ("sdk-mlp", 1, "onnx")
    v2 = admin.upload("sdk-mlp", [tiny_onnx.path])  # no decoding in v2
    assert v2["version"] == 2

    expected = softmax(tiny_onnx.logits)
    answer = admin.predict("sdk-mlp:1", tiny_onnx.inputs)  # numpy straight through
    np.testing.assert_allclose(np.asarray(answer["outputs"]), expected, rtol=1e-4, atol=1e-5)
    labels = [p["label"] for p in answer["predictions"]]
    assert labels == [["a", "b", "c"][i] for i in expected.argmax(axis=1)]
    one = admin.predict("sdk-mlp:1", tiny_onnx.inputs[0].tolist())
    assert one["predictions"]["label"] == labels[0]

    admin.set_alias("sdk-mlp", "production", 1)
    assert admin.predict("sdk-mlp", tiny_onnx.inputs)["version"] == 1  # production wins
    admin.set_alias("sdk-mlp", "staging", 2)
    raw = admin.predict("sdk-mlp@staging", tiny_onnx.inputs)
    assert raw["version"] == 2
    assert "predictions" not in raw
    np.testing.assert_allclose(np.asarray(raw["outputs"]), tiny_onnx.logits, rtol=1e-4, atol=1e-5)
    assert {a["alias"]: a["version"] for a in admin.list_aliases("sdk-mlp")} == {"production": 1, "staging": 2}
    admin.delete_alias("sdk-mlp", "staging")
    assert [a["alias"] for a in admin.list_aliases("sdk-mlp")] == ["production"]

    # Deleting: a version no request has loaded (see test_a_deleted_version_is_never_served_again).
    assert admin.upload("sdk-mlp", tiny_onnx.path)["version"] == 3
    admin.set_alias("sdk-mlp", "canary", 3)
    with pytest.raises(AliasInUse):
        admin.delete_version("sdk-mlp", 3)
    admin.delete_alias("sdk-mlp", "canary")
    admin.delete_version("sdk-mlp", 3)
    assert [v["version"] for v in admin.list_versions("sdk-mlp")["items"]] == [2, 1]

    assert admin.update_version("sdk-mlp", 1, description="tiny")["description"] == "tiny"
    got = admin.get_version("sdk-mlp", 1)
    assert [f["path"] for f in got["files"]] == ["mlp.onnx"]
    assert admin.lineage("sdk-mlp", 1)[0]["version"] == 1

    written = admin.download("sdk-mlp", 1, "mlp.onnx", tmp_path)
    assert written == tmp_path / "mlp.onnx"
    assert written.read_bytes() == tiny_onnx.path.read_bytes()


def test_infer_v2(admin: Client, tiny_onnx: TinyOnnx) -> None:
    admin.upload("sdk-v2", tiny_onnx.path)
    answer = admin.infer_v2("sdk-v2", {"input": tiny_onnx.inputs}, version=1)
    (out,) = answer["outputs"]
    assert (out["name"], out["shape"]) == ("logits", [5, 3])
    got = np.asarray(out["data"]).reshape(out["shape"])
    np.testing.assert_allclose(got, tiny_onnx.logits, rtol=1e-4, atol=1e-5)
    # the V2 routes answer errors in the protocol's shape; the SDK raises the same classes for them
    with pytest.raises(ModelNotFound, match="'sdk-v2-absent' not found"):
        admin.infer_v2("sdk-v2-absent", {"input": tiny_onnx.inputs})
    with pytest.raises(InvalidInput):
        admin.infer_v2("sdk-v2", {"input": tiny_onnx.inputs[:, :3]})


def test_predict_tensor_sends_and_gets_raw_arrays(admin: Client, tiny_onnx: TinyOnnx) -> None:
    admin.upload("sdk-raw", tiny_onnx.path, manifest={"postprocess": [{"softmax": True}]})
    batch = admin.predict_tensor("sdk-raw", tiny_onnx.inputs)
    assert (batch.dtype, batch.shape) == (np.float32, (5, 3))
    np.testing.assert_allclose(batch, softmax(tiny_onnx.logits), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch, np.asarray(admin.predict("sdk-raw", tiny_onnx.inputs)["outputs"]), atol=1e-6)
    one = admin.predict_tensor("sdk-raw", tiny_onnx.inputs[0])  # one example in, one answer out
    assert one.shape == (3,)
    np.testing.assert_allclose(one, batch[0], atol=1e-6)
    # float64 and big-endian arrays go out as what they are: the server casts to the model's input
    wide = admin.predict_tensor("sdk-raw", tiny_onnx.inputs.astype(">f8"))
    np.testing.assert_allclose(wide, batch, atol=1e-6)
    with pytest.raises(TypeError, match="float32"):
        admin.predict_tensor("sdk-raw", tiny_onnx.inputs.astype(np.complex64))
    with pytest.raises(InvalidInput) as info:
        admin.predict_tensor("sdk-raw", np.zeros((2, 5), np.float32))
    assert "shape" in str(info.value)


async def test_async_client(live_server: Server, tiny_onnx: TinyOnnx, tmp_path: Path) -> None:
    async with AsyncClient(*live_server) as mp:
        assert (await mp.whoami())["role"] == "admin"
        await mp.create_model("sdk-async", tags=["x"])
        assert (await mp.get_model("sdk-async"))["tags"] == ["x"]
        with pytest.raises(ModelExists):
            await mp.create_model("sdk-async")
        version = await mp.upload("sdk-async", tiny_onnx.path)
        answer = await mp.predict(f"sdk-async:{version['version']}", tiny_onnx.inputs)
        np.testing.assert_allclose(np.asarray(answer["outputs"]), tiny_onnx.logits, rtol=1e-4, atol=1e-5)
        raw = await mp.predict_tensor(f"sdk-async:{version['version']}", tiny_onnx.inputs)
        np.testing.assert_allclose(raw, tiny_onnx.logits, rtol=1e-4, atol=1e-5)
        path = await mp.download("sdk-async", 1, "mlp.onnx", tmp_path / "copy.onnx")
        assert path.read_bytes() == tiny_onnx.path.read_bytes()
        await mp.delete_model("sdk-async")
        with pytest.raises(ModelNotFound):
            await mp.get_model("sdk-async")


def test_a_deleted_version_is_never_served_again(admin: Client, tmp_path: Path) -> None:
    import torch
    from torch import nn

    def export(seed: int) -> tuple[Path, nn.Module]:
        torch.manual_seed(seed)
        model = nn.Linear(4, 3).eval()
        path = tmp_path / f"linear-{seed}.onnx"
        torch.onnx.export(
            model, (torch.zeros(1, 4),), str(path), dynamo=False, input_names=["input"], output_names=["y"],
            dynamic_axes={"input": {0: "batch"}, "y": {0: "batch"}},
        )  # fmt: skip
        return path, model

    (old_path, _), (new_path, new_model) = export(1), export(2)
    x = np.ones((1, 4), dtype=np.float32)
    admin.upload("sdk-stale-old", old_path)
    admin.predict("sdk-stale-old:1", x)  # loads it into the server's cache
    admin.delete_version("sdk-stale-old", 1)
    admin.upload("sdk-stale-new", new_path)
    with torch.no_grad():
        expected = new_model(torch.from_numpy(x)).numpy()
    got = np.asarray(admin.predict("sdk-stale-new:1", x)["outputs"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
