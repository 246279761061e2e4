"""formats.detect / refuse_pickle / get: names propose, bytes decide, pickle never passes."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport import formats
from modelport.errors import UnsafeFormat, UnsupportedFormat
from modelport.store.bundle import FORMAT_NAMES

# PROTO 2, GLOBAL os.system, 'id', TUPLE1, REDUCE, STOP: what a malicious pickle looks like on disk
EVIL_PICKLE = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."


def _tiny_module() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 2))


def test_formats_cover_the_manifest_names() -> None:
    assert set(formats.FORMATS) == set(FORMAT_NAMES)
    for name in FORMAT_NAMES:
        assert name == formats.get(name).NAME
    with pytest.raises(UnsupportedFormat):
        formats.get("pickle")


def test_torch_archives_are_told_apart_by_listing(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(_tiny_module()), str(tmp_path / "m.pt"))
    assert formats.detect("m.pt", tmp_path / "m.pt") == "torchscript"
    program = torch.export.export(_tiny_module(), (torch.zeros(2, 4),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    assert formats.detect("m.pt2", tmp_path / "m.pt2") == "torch_export"
    (tmp_path / "m.zip").write_bytes((tmp_path / "m.pt").read_bytes())
    assert formats.detect("m.zip", tmp_path / "m.zip") == "torchscript"


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_is_refused_with_alternatives(tmp_path: Path, zip_format: bool) -> None:
    path = tmp_path / "model.pt"
    torch.save(_tiny_module().state_dict(), path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeFormat) as info:
        formats.detect("model.pt", path)
    message = str(info.value)
    assert "torch.save pickle" in message and "TorchScript" in message and "safetensors" in message
    assert str(tmp_path) not in message


@pytest.mark.parametrize("name", ["model.pkl", "model.pickle", "model.joblib", "model.sav", "model.pkl.gz", "m.PKL"])
def test_pickle_names_are_refused_whatever_the_bytes(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"not even a pickle")
    with pytest.raises(UnsafeFormat, match="pickle"):
        formats.detect(name, tmp_path / name)


@pytest.mark.parametrize("name", ["model.onnx", "weights.bin", "model", "model.keras", "model.safetensors"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_bytes_are_refused_whatever_the_name(tmp_path: Path, name: str, protocol: int) -> None:
    (tmp_path / name).write_bytes(bytes([0x80, protocol]) + EVIL_PICKLE[2:])
    with pytest.raises(UnsafeFormat) as info:
        formats.detect(name, tmp_path / name)
    assert "skops" in info.value.details["instead"] or "TorchScript" in info.value.details["instead"]


def test_object_npy_is_refused_numeric_npy_is_just_unsupported(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFormat, match="Python objects"):
        formats.detect("obj.npy", tmp_path / "obj.npy")
    np.save(tmp_path / "num.npy", np.zeros(3))
    with pytest.raises(UnsupportedFormat):
        formats.detect("num.npy", tmp_path / "num.npy")


def test_zip_with_data_pkl_named_pt_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "m.pt", "w") as z:
        z.writestr("archive/data.pkl", EVIL_PICKLE)
        z.writestr("archive/version", "3")
    with pytest.raises(UnsafeFormat):
        formats.detect("m.pt", tmp_path / "m.pt")


def test_safetensors_whose_header_looks_like_a_pickle_header(tmp_path: Path) -> None:
    header = json.dumps({"__metadata__": {"pad": ""}}).encode()
    header += b" " * (0x280 - len(header))  # size 640: the file starts with 0x80 0x02
    data = (0x280).to_bytes(8, "little") + header
    (tmp_path / "w.safetensors").write_bytes(data)
    assert data[:2] == b"\x80\x02"
    assert formats.detect("w.safetensors", tmp_path / "w.safetensors") == "torch"


def test_other_extensions(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    assert formats.detect("m.onnx", tmp_path / "m.onnx") == "onnx"
    with zipfile.ZipFile(tmp_path / "m.skops", "w") as z:
        z.writestr("schema.json", "{}")
    assert formats.detect("m.skops", tmp_path / "m.skops") == "sklearn"
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", "{}")
    assert formats.detect("m.keras", tmp_path / "m.keras") == "keras"
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert formats.detect("m.h5", tmp_path / "m.h5") == "keras"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.txt", b"hello"),
        ("m.pt", b"plain bytes, no zip"),
        ("m.h5", b"not hdf5"),
        ("m.skops", b"PK\x03\x04broken"),
        ("m.gz", gzip.compress(b"x")),
    ],
)
def test_unknown_files_are_unsupported(tmp_path: Path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UnsupportedFormat) as info:
        formats.detect(name, tmp_path / name)
    assert str(tmp_path) not in str(info.value)


def test_refuse_pickle_passes_clean_files(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", "{}")
    (tmp_path / "m.skops").write_bytes(buf.getvalue())
    formats.refuse_pickle("m.skops", tmp_path / "m.skops")
