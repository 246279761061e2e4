"""formats/torch_export.py and _pt2_guard.py: real exported programs, and archives that would run code."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelport.errors import InvalidArtifact, UnsafeFormat
from modelport.formats import _pt2_guard, torch_export
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

ToManifest = Callable[..., Manifest]
EVIL_PICKLE = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."


class Net(torch.nn.Module):
    """x: (B, 1, 8, 8) float, y: (B, 3) int64 -> (scores (B, 5), totals (B,))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc(h) * self.scale, y.sum(-1) + h.shape[0]


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, net: Net) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, dtype=torch.int64))
    program = torch.export.export(net, example, dynamic_shapes=({0: batch}, {0: batch}))
    folder = tmp_path_factory.mktemp("pt2")
    torch_export.save(program, folder)
    return folder / "model.pt2"


def _rewrite(
    src: Path,
    dst: Path,
    change: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
    program: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Copy a pt2 archive member by member, replacing/adding members or editing models/model.json."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            rel = info.filename[len(root) + 1 :]
            data = (change or {}).get(rel, zin.read(info))
            if rel == "models/model.json" and program is not None:
                loaded = json.loads(data)
                program(loaded)
                data = json.dumps(loaded).encode()
            zout.writestr(info.filename, data)
        for rel, data in (add or {}).items():
            zout.writestr(f"{root}/{rel}", data)


def _first_node(program: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = program["graph_module"]["graph"]["nodes"][0]
    return node


def test_signature_is_read_from_the_program(archive: Path) -> None:
    info = torch_export.inspect(archive.parent, "model.pt2", ManifestInput())
    assert info.signature == Signature(
        inputs=[
            TensorSpec(name="x", dtype="float32", shape=[-1, 1, 8, 8]),
            TensorSpec(name="y", dtype="int64", shape=[-1, 3]),
        ],
        outputs=[
            TensorSpec(name="output_0", dtype="float32", shape=[-1, 5]),
            TensorSpec(name="output_1", dtype="int64", shape=[-1]),
        ],
    )
    assert info.extra["parameters"] > 0


def test_predictions_match_the_module(archive: Path, net: Net, to_manifest: ToManifest) -> None:
    given = Signature(
        inputs=[TensorSpec(name="x", shape=[-1, 1, 8, 8]), TensorSpec(name="y", dtype="int64", shape=[-1, 3])],
        outputs=[TensorSpec(name="output_0"), TensorSpec(name="output_1", dtype="int64")],
    )
    info = torch_export.inspect(archive.parent, "model.pt2", ManifestInput(signature=given))
    predictor = torch_export.load(archive.parent, to_manifest("torch_export", "model.pt2", info))
    rng = np.random.default_rng(0)
    x, y = rng.random((3, 1, 8, 8), dtype=np.float32), rng.integers(0, 9, (3, 3))
    out = predictor({"x": x, "y": y})
    with torch.no_grad():
        scores, totals = net(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(out["output_0"], scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(out["output_1"], totals.numpy())
    predictor.unload()


def test_a_faithful_copy_still_loads(archive: Path, tmp_path: Path) -> None:
    """The attack tests below rewrite archives the same way, so only their one change is refused."""
    _rewrite(archive, tmp_path / "model.pt2")
    assert torch_export.inspect(tmp_path, "model.pt2", ManifestInput()).signature is not None


def _set_target(program: dict[str, Any]) -> None:
    _first_node(program)["target"] = "torch.os.system"


def _set_expr(program: dict[str, Any]) -> None:
    values = program["graph_module"]["graph"]["tensor_values"]
    values["x"]["sizes"][0]["as_expr"]["expr_str"] = "__import__('os').system('echo pwned')"


def _set_guard(program: dict[str, Any]) -> None:
    program["guards_code"] = ["__import__('os').system('echo pwned') == 0"]


def _set_arg_names(program: dict[str, Any]) -> None:
    program["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = ["x=print('pwned')", "y"]


def _set_param_name(program: dict[str, Any]) -> None:
    spec = program["graph_module"]["signature"]["input_specs"][0]["parameter"]
    spec["parameter_name"] = 'conv"); print("pwned'


def _set_stack_trace(program: dict[str, Any]) -> None:
    _first_node(program)["metadata"]["stack_trace"] = 'File "x.py", line 1, in f\n    y\rprint("pwned")'


def _set_custom(program: dict[str, Any]) -> None:
    _first_node(program)["metadata"]["custom"] = json.dumps({"note": "a\nprint('pwned')"})


@pytest.mark.parametrize(
    "edit", [_set_target, _set_expr, _set_guard, _set_arg_names, _set_param_name, _set_stack_trace, _set_custom]
)
def test_programs_that_reach_eval_or_exec_are_refused(archive: Path, tmp_path: Path, edit: Any) -> None:
    _rewrite(archive, tmp_path / "model.pt2", program=edit)
    with pytest.raises(UnsafeFormat) as info:
        torch_export.inspect(tmp_path, "model.pt2", ManifestInput())
    assert "never loads pickle" in str(info.value) and str(tmp_path) not in str(info.value)


def test_pickled_weights_are_refused(archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    next(iter(config["config"].values()))["use_pickle"] = True
    _rewrite(
        archive, tmp_path / "model.pt2", change={"data/weights/model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(UnsafeFormat, match="pickled object"):
        torch_export.inspect(tmp_path, "model.pt2", ManifestInput())


def test_pickle_in_sample_inputs_is_refused(archive: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", EVIL_PICKLE)
        z.writestr("archive/version", "3")
    _rewrite(archive, tmp_path / "a" / "model.pt2", change={"data/sample_inputs/model.pt": buf.getvalue()})
    with pytest.raises(UnsafeFormat, match="os system"):
        torch_export.inspect(tmp_path / "a", "model.pt2", ManifestInput())
    _rewrite(archive, tmp_path / "b" / "model.pt2", change={"data/sample_inputs/model.pt": EVIL_PICKLE})
    with pytest.raises(UnsafeFormat, match="raw pickle"):
        torch_export.inspect(tmp_path / "b", "model.pt2", ManifestInput())


@pytest.mark.parametrize(
    "member", ["data/aotinductor/model/model.so", "data/constants/opaque_obj_0", "data/weights/model.pt", "code/x.py"]
)
def test_members_torch_would_execute_are_refused(archive: Path, tmp_path: Path, member: str) -> None:
    _rewrite(archive, tmp_path / "model.pt2", add={member: b"\x7fELF"})
    with pytest.raises(UnsafeFormat, match="does not load"):
        torch_export.inspect(tmp_path, "model.pt2", ManifestInput())


def test_duplicate_members_are_refused(archive: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rewrite(archive, tmp_path / "model.pt2", add={"models/model.json": b"{}"})
    with pytest.raises(UnsafeFormat, match="same name"):
        torch_export.inspect(tmp_path, "model.pt2", ManifestInput())


def test_keyword_inputs_are_refused(archive: Path, tmp_path: Path) -> None:
    def kwargs(program: dict[str, Any]) -> None:
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        spec[1]["children_spec"][1]["context"] = json.dumps(["x"])
        signature["in_spec"] = json.dumps(spec)

    _rewrite(archive, tmp_path / "model.pt2", program=kwargs)
    with pytest.raises(InvalidArtifact, match="positional"):
        torch_export.inspect(tmp_path, "model.pt2", ManifestInput())


@pytest.mark.parametrize(
    "text",
    ["Symbol('s17', positive=True, integer=True)", "2*s17 + 1", "Mod(s0, 2)", "FloorDiv(s0, 2)", "s0**2", "-s0"],
)
def test_plain_shape_formulas_pass(text: str) -> None:
    assert _pt2_guard._expr_problem(text, guard_code=False) is None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "Symbol.__class__",
        "exit()",
        "open('x')",
        "Symbol('a b')",
        "Symbol('x', **{'y': 1})",
        "[s for s in s0]",
        "lambda: 1",
        "9**9**9**9**9",
        "s0**s1",
        "x" * 5000,
    ],
)
def test_code_in_shape_formulas_is_caught(text: str) -> None:
    assert _pt2_guard._expr_problem(text, guard_code=False) is not None


def test_guards_allow_size_reads_only() -> None:
    ok = ["L['x'].size()[0] <= 1024", "L['y'].size()[0] == L['x'].size()[0]", "math.isnan(L['t'])"]
    for text in ok:
        assert _pt2_guard._expr_problem(text, guard_code=True) is None
    for text in ["L['x'].__class__", "L['x'].numpy().tofile('x')", "getattr(L, 'x')", "L['a\"b']"]:
        assert _pt2_guard._expr_problem(text, guard_code=True) is not None


class MakesATensor(torch.nn.Module):
    """Adds a tensor its forward makes: export records the device it was made on (the CPU here)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.ones(2)


def test_a_program_moves_to_a_device_with_the_tensors_its_graph_makes(tmp_path: Path) -> None:
    """What ``device: cuda`` does to a program exported on the CPU, shown on the meta device (which
    every torch build has): every tensor moves, those made inside the graph too; ``module().to()``
    alone leaves those on the CPU and the first call fails."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(MakesATensor(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}})
    torch_export.save(program, tmp_path)
    meta = torch.device("meta")
    with pytest.raises(RuntimeError, match="device"):
        torch.export.load(str(tmp_path / "model.pt2")).module().to(meta)(torch.zeros(3, 4, device=meta))
    module = torch_export.module_on(torch.export.load(str(tmp_path / "model.pt2")), meta)
    out = module(torch.zeros(3, 4, device=meta))
    assert out.device == meta and tuple(out.shape) == (3, 2)
    on_cpu = torch_export.module_on(torch.export.load(str(tmp_path / "model.pt2")), torch.device("cpu"))
    torch.testing.assert_close(on_cpu(torch.ones(3, 4)), program.module()(torch.ones(3, 4)))
