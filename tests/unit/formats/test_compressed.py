"""formats/compressed.py: sparse and int8 weights that shrink on disk, and files crafted to break the decoder."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidArtifact
from modelport.formats import compressed
from modelport.formats import torch as torch_format
from modelport.store.bundle import Manifest, ManifestInput
from modelport.training.nets import build_network

ToManifest = Callable[..., Manifest]
LENET = [{"dense": 300, "activation": "relu"}, {"dense": 100, "activation": "relu"}, {"dense": 10}]
SMALL = [{"dense": 4}]  # "0.weight" (4, 6), "0.bias" (4,)
KEY = compressed.METADATA_KEY


def _pruned(shape: tuple[int, ...], sparsity: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    weight[torch.rand(shape, generator=generator) < sparsity] = 0
    return weight


def _prune_by_magnitude(net: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest ``sparsity`` of each weight matrix, as magnitude pruning does."""
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("weight"):
                threshold = param.abs().flatten().kthvalue(int(sparsity * param.numel())).values
                param[param.abs() <= threshold] = 0


def _lenet(sparsity: float) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(LENET, [784])
    _prune_by_magnitude(net, sparsity)
    return net.eval()


def _dequantized(weight: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 round trip, written out independently of the module."""
    scale = weight.abs().amax(dim=1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale) * scale


def _roundtrip(state: dict[str, torch.Tensor], *, int8: bool = False) -> dict[str, torch.Tensor]:
    tensors, metadata = compressed.encode(state, int8=int8)
    return compressed.decode(tensors, metadata)


def test_sparse_float32_roundtrip_is_exact() -> None:
    weight = _pruned((300, 784), 0.9)
    weight[7] = 0  # a whole zero row: gaps over 255 need fillers
    weight[-1] = 0  # and a zero tail
    bias = torch.randn(300)
    tensors, metadata = compressed.encode({"0.weight": weight, "0.bias": bias})
    assert set(tensors) == {"0.weight::values", "0.weight::gaps", "0.bias"}
    assert json.loads(metadata[KEY]) == {"0.weight": {"kind": "sparse", "shape": [300, 784], "values": "float32"}}
    assert metadata["format"] == "pt"
    assert int(tensors["0.weight::gaps"].max()) == 255 and tensors["0.weight::gaps"].dtype == torch.uint8
    out = compressed.decode(tensors, metadata)
    assert torch.equal(out["0.weight"], weight) and out["0.bias"] is bias


@pytest.mark.parametrize("shape", [(3, 1000), (1, 256), (2, 255), (1, 1)])
def test_all_zero_weights_roundtrip_with_fillers_only(shape: tuple[int, ...]) -> None:
    weight = torch.zeros(shape)
    assert torch.equal(_roundtrip({"w": weight})["w"], weight)


def test_gaps_just_over_255_split_into_a_filler() -> None:
    weight = torch.zeros(1, 600)
    weight[0, [0, 256, 511, 599]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    tensors, metadata = compressed.encode({"w": weight})
    assert tensors["w::gaps"].tolist() == [1, 255, 1, 255, 88]  # +1, +255 (filler), +1, +255, +88
    assert tensors["w::values"].tolist() == [1.0, 0.0, 2.0, 3.0, 4.0]
    assert torch.equal(compressed.decode(tensors, metadata)["w"], weight)


def test_int8_roundtrip_is_within_half_a_scale_per_element() -> None:
    sparse, dense = _pruned((300, 784), 0.9, seed=1), _pruned((64, 3, 3, 3), 0.0, seed=2)
    dense[5] = 0  # a zero row keeps scale 1 and decodes to zeros
    tensors, metadata = compressed.encode({"a": sparse, "b": dense}, int8=True)
    table = json.loads(metadata[KEY])
    assert table["a"]["kind"] == "sparse" and table["b"]["kind"] == "int8"
    assert tensors["a::values"].dtype == torch.int8 and tensors["b::q"].dtype == torch.int8
    out = compressed.decode(tensors, metadata)
    for key, weight in (("a", sparse), ("b", dense)):
        rows = weight.reshape(weight.shape[0], -1)
        scale = tensors[f"{key}::scale"][:, None]
        error = (out[key].reshape(rows.shape) - rows).abs()
        assert bool((error <= scale / 2 * (1 + 1e-5)).all())
    assert bool((out["b"][5] == 0).all()) and float(tensors["b::scale"][5]) == 1.0


def test_plain_storage_is_kept_where_encoding_would_not_be_smaller() -> None:
    state = {
        "dense": torch.randn(32, 32),  # no zeros: sparse float32 costs 5 bytes per element
        "bias": torch.zeros(32),  # 1-d
        "ids": torch.zeros(8, 8, dtype=torch.int64),  # not floating
        "double": torch.zeros(64, 64, dtype=torch.float64),  # float32 values would lose precision
    }
    tensors, metadata = compressed.encode(state)
    assert tensors == state and KEY not in metadata


def test_int8_keeps_non_finite_weights_lossless() -> None:
    weight = _pruned((16, 64), 0.9)
    weight[0, 1] = float("inf")
    tensors, metadata = compressed.encode({"w": weight}, int8=True)
    assert json.loads(metadata[KEY])["w"]["values"] == "float32"
    assert torch.equal(compressed.decode(tensors, metadata)["w"], weight)


def test_keys_with_the_part_separator_are_refused() -> None:
    with pytest.raises(ValueError, match="::"):
        compressed.encode({"a::b": torch.zeros(4, 4)})


def test_files_without_the_encoding_decode_unchanged() -> None:
    state = {"0.weight": torch.randn(4, 6)}
    assert compressed.decode(state, {"format": "pt"}) == state
    assert compressed.decode(state, None) == state
    assert compressed.declared_shapes({"0.weight": (4, 6)}, None) == {"0.weight": (4, 6)}


def test_declared_shapes_come_from_the_header() -> None:
    tensors, metadata = compressed.encode({"0.weight": _pruned((300, 784), 0.95), "0.bias": torch.zeros(300)})
    header = {k: tuple(v.shape) for k, v in tensors.items()}
    assert compressed.declared_shapes(header, metadata) == {"0.weight": (300, 784), "0.bias": (300,)}


def _file_size(net: torch.nn.Module, folder: Path, encoding: torch_format.Encoding) -> int:
    torch_format.save(net, folder, layers=LENET, input_shape=[784], encoding=encoding)
    return (folder / "model.safetensors").stat().st_size


def test_pruned_int8_lenet_is_30x_smaller_and_loads_back(tmp_path: Path, to_manifest: ToManifest) -> None:
    net = _lenet(0.95)
    dense = _file_size(net, tmp_path / "dense", "dense")
    small = _file_size(net, tmp_path / "int8", "int8")
    assert dense > 1_066_000 and dense / small >= 30, (dense, small)

    given = ManifestInput(architecture=torch_format.architecture(LENET, [784]))
    info = torch_format.inspect(tmp_path / "int8", "model.safetensors", given)
    assert info.extra["parameters"] == 266_610
    predictor = torch_format.load(tmp_path / "int8", to_manifest("torch", "model.safetensors", info, given))
    reference = build_network(LENET, [784]).eval()
    state = {k: _dequantized(v) if v.ndim == 2 else v for k, v in net.state_dict().items()}
    reference.load_state_dict(state)
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor({"input": x})["output"], expected, atol=1e-4)
    predictor.unload()


def test_sparse_size_shrinks_with_sparsity_and_stays_exact(tmp_path: Path) -> None:
    sizes = []
    for sparsity in (0.5, 0.8, 0.9):
        net = _lenet(sparsity)
        sizes.append(_file_size(net, tmp_path / str(sparsity), "sparse"))
        loaded = torch_format.load_network(tmp_path / str(sparsity), "model.safetensors", LENET, [784])
        for key, value in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    dense = _file_size(_lenet(0.5), tmp_path / "dense", "dense")
    assert dense > sizes[0] > sizes[1] > sizes[2], (dense, sizes)


def test_dense_encoding_writes_todays_file(tmp_path: Path) -> None:
    net = _lenet(0.9)
    torch_format.save(net, tmp_path, layers=LENET, input_shape=[784])
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    safetensors.torch.save_file(state, str(tmp_path / "today.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "model.safetensors").read_bytes() == (tmp_path / "today.safetensors").read_bytes()


def test_unknown_encodings_are_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encoding"):
        torch_format.save(_lenet(0.5), tmp_path, layers=LENET, input_shape=[784], encoding="zip")  # type: ignore[arg-type]  # on purpose


# --- malformed files -------------------------------------------------------------------------------------

Crafted = tuple[dict[str, torch.Tensor], "dict[str, Any] | str"]
"""Tensors to write, and the encoding table (or the raw metadata string)."""


def _sparse_file(parts: dict[str, torch.Tensor | None] | None = None, **entry: Any) -> Crafted:
    """A valid sparse int8 "0.weight" (4, 6) for SMALL, with parts or table fields replaced (None drops)."""
    tensors: dict[str, torch.Tensor | None] = {
        "0.bias": torch.zeros(4),
        "0.weight::values": torch.tensor([3, -5, 7], dtype=torch.int8),
        "0.weight::gaps": torch.tensor([1, 10, 12], dtype=torch.uint8),
        "0.weight::scale": torch.full((4,), 0.5),
    }
    tensors.update({f"0.weight::{name}": part for name, part in (parts or {}).items()})
    table = {"0.weight": {"kind": "sparse", "shape": [4, 6], "values": "int8", **entry}}
    return {k: v for k, v in tensors.items() if v is not None}, table


def _int8_file(parts: dict[str, torch.Tensor | None] | None = None, **entry: Any) -> Crafted:
    tensors: dict[str, torch.Tensor | None] = {
        "0.bias": torch.zeros(4),
        "0.weight::q": torch.ones(4, 6, dtype=torch.int8),
        "0.weight::scale": torch.ones(4),
    }
    tensors.update({f"0.weight::{name}": part for name, part in (parts or {}).items()})
    table = {"0.weight": {"kind": "int8", "shape": [4, 6], "values": "int8", **entry}}
    return {k: v for k, v in tensors.items() if v is not None}, table


def _with(crafted: Crafted, tensors: dict[str, torch.Tensor] | None = None, table: Any = None) -> Crafted:
    return {**crafted[0], **(tensors or {})}, crafted[1] if table is None else table


def _u8(*gaps: int) -> torch.Tensor:
    return torch.tensor(gaps, dtype=torch.uint8)


VALID = _sparse_file()
MALFORMED: dict[str, tuple[Crafted, str]] = {
    "bad json": (_with(VALID, table="{not json"), "not valid JSON"),
    "deeply nested json": (_with(VALID, table="[" * 100_000), "not valid JSON"),
    "json not an object": (_with(VALID, table="[1, 2]"), "JSON object"),
    "entry not an object": (_with(VALID, table={"0.weight": 3}), "exactly kind"),
    "entry with an extra field": (_sparse_file(extra=1), "exactly kind"),
    "unknown kind": (_sparse_file(kind="zip"), "unknown kind"),
    "unhashable kind": (_sparse_file(kind=["sparse"]), "unknown kind"),
    "unknown values dtype": (_sparse_file(values="float16"), "values"),
    "unhashable values": (_sparse_file(values={"a": 1}), "values"),
    "int8 kind with float values": (_int8_file(values="float32"), "values"),
    "shape not a list": (_sparse_file(shape="4x6"), "shape"),
    "empty shape": (_sparse_file(shape=[]), "shape"),
    "zero dimension": (_sparse_file(shape=[4, 0]), "shape"),
    "negative dimensions": (_sparse_file(shape=[-4, -6]), "shape"),
    "boolean dimension": (_sparse_file(shape=[True, 24]), "shape"),
    "float dimension": (_sparse_file(shape=[4.0, 6]), "shape"),
    "too many dimensions": (_sparse_file(shape=[1] * 40 + [4, 6]), "shape"),
    "too many elements": (_sparse_file(shape=[1 << 20, 1 << 20]), "elements"),
    "huge integer": (_sparse_file(shape=[10**200, 1]), "elements"),
    "tiny file declaring a huge tensor": (
        _sparse_file({"values": torch.ones(3), "scale": None}, values="float32", shape=[1 << 15, 1 << 15]),
        "cannot encode",
    ),
    "missing gaps": (_sparse_file({"gaps": None}), "lacks"),
    "missing scale": (_sparse_file({"scale": None}), "lacks"),
    "missing q": (_int8_file({"q": None}), "lacks"),
    "extra part": (_sparse_file({"extra": torch.zeros(3)}), "unexpected part"),
    "part of an unencoded key": (_with(VALID, {"0.bias::values": torch.zeros(1)}), "unexpected part"),
    "plain and encoded": (_with(VALID, {"0.weight": torch.zeros(4, 6)}), "both plain and encoded"),
    "separator in the encoded key": (
        _with(VALID, table={"0.weight::x": {"kind": "sparse", "shape": [4, 6], "values": "int8"}}),
        "contains",
    ),
    "gap of 0": (_sparse_file({"gaps": _u8(1, 0, 12)}), "gap of 0"),
    "positions past the end": (_sparse_file({"gaps": _u8(1, 10, 14)}), "past the end"),
    "far past the end": (_sparse_file({"gaps": _u8(255, 255, 255)}), "past the end"),
    "more entries than elements": (
        _sparse_file({"values": torch.zeros(25, dtype=torch.int8), "gaps": torch.ones(25, dtype=torch.uint8)}),
        "cannot encode",
    ),
    "values and gaps lengths differ": (_sparse_file({"values": torch.zeros(2, dtype=torch.int8)}), "same length"),
    "2-d values and gaps": (
        _sparse_file({"values": torch.zeros(1, 3, dtype=torch.int8), "gaps": torch.ones(1, 3, dtype=torch.uint8)}),
        "1-d",
    ),
    "gaps not uint8": (_sparse_file({"gaps": torch.tensor([1, 10, 12], dtype=torch.int16)}), "gaps is int16"),
    "int8 values stored as float32": (_sparse_file({"values": torch.tensor([3.0, 5.0, 7.0])}), "values is float32"),
    "float32 values stored as float64": (
        _sparse_file({"values": torch.ones(3, dtype=torch.float64), "scale": None}, values="float32"),
        "values is float64",
    ),
    "scale not float32": (_sparse_file({"scale": torch.ones(4, dtype=torch.float64)}), "scale is float64"),
    "scale of the wrong length": (_sparse_file({"scale": torch.ones(3)}), "scale has shape"),
    "nan scale": (_sparse_file({"scale": torch.tensor([1.0, float("nan"), 1.0, 1.0])}), "finite"),
    "infinite scale": (_int8_file({"scale": torch.tensor([1.0, float("inf"), 1.0, 1.0])}), "finite"),
    "zero scale": (_int8_file({"scale": torch.zeros(4)}), "positive"),
    "q of the wrong shape": (_int8_file({"q": torch.ones(24, dtype=torch.int8)}), "q has shape"),
    "q not int8": (_int8_file({"q": torch.ones(4, 6, dtype=torch.uint8)}), "q is uint8"),
}


def _metadata(table: dict[str, Any] | str) -> dict[str, str]:
    return {"format": "pt", KEY: table if isinstance(table, str) else json.dumps(table)}


def test_the_crafted_template_is_valid(tmp_path: Path) -> None:
    tensors, table = VALID
    safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"), metadata=_metadata(table))
    net = torch_format.load_network(tmp_path, "model.safetensors", SMALL, [6])
    expected = torch.zeros(24)
    expected[[0, 10, 22]] = torch.tensor([1.5, -2.5, 3.5])  # value * scale 0.5, at cumsum(gaps) - 1
    assert torch.equal(net.state_dict()["0.weight"], expected.reshape(4, 6))


@pytest.mark.parametrize(("crafted", "match"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_are_invalid_artifacts(tmp_path: Path, crafted: Crafted, match: str) -> None:
    tensors, table = crafted
    safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"), metadata=_metadata(table))
    given = ManifestInput(architecture=torch_format.architecture(SMALL, [6]))
    with pytest.raises(InvalidArtifact, match=match) as info:
        torch_format.inspect(tmp_path, "model.safetensors", given)
    assert str(tmp_path) not in info.value.message


@pytest.mark.parametrize(("crafted", "match"), MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_refuses_malformed_parts(crafted: Crafted, match: str) -> None:
    tensors, table = crafted
    with pytest.raises(InvalidArtifact, match=match):
        compressed.decode(tensors, _metadata(table))


def test_a_shape_that_does_not_fit_the_layer_list_is_refused_before_loading(tmp_path: Path) -> None:
    tensors, table = _sparse_file({"scale": torch.ones(6)}, shape=[6, 4])
    safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"), metadata=_metadata(table))
    given = ManifestInput(architecture=torch_format.architecture(SMALL, [6]))
    with pytest.raises(InvalidArtifact, match="do not match"):
        torch_format.inspect(tmp_path, "model.safetensors", given)


# --- fuzz ------------------------------------------------------------------------------------------------


def _reference(
    shape: list[int], gaps: list[int], values: list[float], scale: list[float] | None
) -> torch.Tensor | None:
    """Decode element by element, or None where the spec says the file is invalid."""
    if not shape or any(d <= 0 for d in shape) or len(gaps) != len(values) or 0 in gaps:
        return None
    numel = math.prod(shape)
    if len(gaps) > numel or numel > 255 * (len(gaps) + 1) or sum(gaps) > numel:
        return None
    if scale is not None and (len(scale) != shape[0] or not all(math.isfinite(s) and s > 0 for s in scale)):
        return None
    dense, position, row = torch.zeros(numel), -1, numel // shape[0]
    for gap, value in zip(gaps, values, strict=True):
        position += gap
        factor = torch.tensor(1.0 if scale is None else scale[position // row], dtype=torch.float32)
        dense[position] = torch.tensor(value, dtype=torch.float32) * factor
    return dense.reshape(shape)


FINITE_OR_NOT = st.floats(width=32, allow_nan=True, allow_infinity=True)
# Half the examples are well formed (so many decode and are compared), half arbitrary.
SHAPES = st.lists(st.integers(-2, 12), max_size=3)
GAPS = st.lists(st.integers(1, 8), max_size=40) | st.lists(st.integers(0, 255), max_size=40)
SCALES = st.lists(FINITE_OR_NOT | st.floats(0.125, 4, width=32), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    shape=SHAPES,
    gaps=GAPS,
    extra_values=st.integers(-1, 1),
    int8=st.booleans(),
    scale=SCALES,
    well_formed=st.booleans(),
    data=st.data(),
)
def test_decode_fuzz_gives_the_reference_tensor_or_invalid_artifact(
    shape: list[int],
    gaps: list[int],
    extra_values: int,
    int8: bool,
    scale: list[float],
    well_formed: bool,
    data: st.DataObject,
) -> None:
    count = max(0, len(gaps) + extra_values)
    if well_formed:
        shape = [abs(d) + 1 for d in shape] or [7]
        scale = [s if math.isfinite(s) and s > 0 else 1.0 for s in scale * shape[0]][: shape[0]] or [0.5] * shape[0]
        gaps = [g for g, total in zip(gaps, itertools.accumulate(gaps), strict=True) if total <= math.prod(shape)]
        count = len(gaps)
    element = st.integers(-128, 127) if int8 else st.floats(width=32, allow_nan=False)
    values = data.draw(st.lists(element, min_size=count, max_size=count))
    tensors = {
        "w::values": torch.tensor(values, dtype=torch.int8 if int8 else torch.float32),
        "w::gaps": torch.tensor(gaps, dtype=torch.uint8),
    }
    if int8:
        tensors["w::scale"] = torch.tensor(scale, dtype=torch.float32)
    metadata = _metadata({"w": {"kind": "sparse", "shape": shape, "values": "int8" if int8 else "float32"}})
    expected = _reference(shape, gaps, [float(v) for v in values], scale if int8 else None)
    if expected is None:
        with pytest.raises(InvalidArtifact):
            compressed.decode(tensors, metadata)
    else:
        torch.testing.assert_close(compressed.decode(tensors, metadata)["w"], expected, equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(
    table=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    )
)
def test_decode_fuzz_arbitrary_tables_raise_only_invalid_artifact(table: Any) -> None:
    with contextlib.suppress(InvalidArtifact):  # anything else fails the test
        compressed.decode(dict(VALID[0]), _metadata(json.dumps({"0.weight": table})))


@settings(max_examples=100, deadline=None)
@given(
    shape=st.lists(st.integers(1, 700), min_size=2, max_size=3).filter(lambda s: math.prod(s) <= 20_000),
    density=st.sampled_from([0.0, 0.001, 0.01, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_encode_then_decode_is_exact_for_any_sparsity(shape: list[int], density: float, seed: int) -> None:
    weight = _pruned(tuple(shape), 1 - density, seed)
    assert torch.equal(_roundtrip({"w": weight})["w"], weight)
    out = _roundtrip({"w": weight}, int8=True)["w"]
    _, metadata = compressed.encode({"w": weight}, int8=True)
    if "w" in json.loads(metadata.get(compressed.METADATA_KEY, "{}")):
        assert torch.allclose(out, _dequantized(weight.reshape(shape[0], -1)).reshape(shape), atol=1e-6)
    else:  # a tensor so small that int8 would not be smaller is kept exact
        assert torch.equal(out, weight)
