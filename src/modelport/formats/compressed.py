"""Compressed storage of pruned and int8 weights inside an ordinary safetensors file.

A pruned network is mostly zeros, but a dense safetensors file spends 4 bytes on each of them, so
the size on disk would not shrink with sparsity. Each weight (a floating tensor with two or more
dimensions) is stored in the smallest of these encodings; biases and other 1-d tensors stay plain:

- ``sparse`` (Deep Compression's relative index): the nonzero values in row-major order in
  ``<key>::values`` (float32, or int8 with ``int8=True``) and, in ``<key>::gaps`` (uint8), the
  distance of each from the previous one (the first from position -1). A gap over 255 is split by
  filler entries (value 0, gap 255), so decoding is ``dense[cumsum(gaps) - 1] = values``. Fillers
  also pad the tail, so every 255 zeros cost one entry: the dense size a file may declare is bounded
  by its own size (at most 255 elements per entry), and a tiny upload cannot ask for gigabytes.
- ``int8``: ``<key>::q``, the whole tensor in int8, for weights not sparse enough for ``sparse``.
- With int8 values, ``<key>::scale`` holds one float32 scale per output row (dim 0): symmetric,
  ``max|w| / 127``, and 1 for a row of zeros; the weight is ``q * scale``, within ``scale / 2``.

The safetensors metadata ``"modelport.encoding"`` maps each encoded key to ``{"kind", "shape",
"values"}``; a file without it is plain. The file is untrusted bytes, so :func:`declared_shapes`
checks the table against the header before any data is read, and :func:`decode` checks the data
before allocating anything; both raise :class:`~modelport.errors.InvalidArtifact` and nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from modelport.errors import InvalidArtifact

METADATA_KEY = "modelport.encoding"
SEP = "::"
"""Separates an encoded tensor's key from the name of one of its parts: ``0.weight::gaps``."""
MAX_GAP = 255
MAX_ELEMENTS = 1 << 31
"""The most elements one decoded tensor may have (8 GiB of float32)."""
MAX_DIMS = 8
_PART_OVERHEAD = 96
"""About what one more tensor costs in the safetensors header and the metadata, in bytes."""
_SHOWN = 80
_LOSSLESS_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)
_VALUE_DTYPES = {"float32": torch.float32, "int8": torch.int8}


@dataclass(frozen=True)
class _Entry:
    """One encoded tensor as the metadata declares it."""

    kind: str
    shape: tuple[int, ...]
    values: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def part_dtypes(self) -> dict[str, torch.dtype]:
        """Part name -> the dtype it must have on disk."""
        scale = {"scale": torch.float32} if self.values == "int8" else {}
        if self.kind == "int8":
            return {"q": torch.int8, **scale}
        return {"values": _VALUE_DTYPES[self.values], "gaps": torch.uint8, **scale}

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "values": self.values}


def encode(state: dict[str, torch.Tensor], *, int8: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata to write with safetensors; each weight takes its smallest encoding.

    Without ``int8`` the encoding is lossless: weights of other dtypes than float32/16/bf16 stay plain.
    """
    tensors: dict[str, torch.Tensor] = {}
    table: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        if SEP in key:
            raise ValueError(f"state_dict key {key!r} contains {SEP!r}, which names the parts of encoded tensors")
        chosen = _smallest(tensor, int8=int8)
        if chosen is None:
            tensors[key] = tensor
            continue
        entry, parts = chosen
        table[key] = entry.as_json()
        tensors.update({f"{key}{SEP}{name}": part for name, part in parts.items()})
    metadata = {"format": "pt"}
    if table:
        metadata[METADATA_KEY] = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return tensors, metadata


def declared_shapes(
    header_shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None
) -> dict[str, tuple[int, ...]]:
    """Dense key -> shape that the file decodes to, from its header alone (no tensor data is read)."""
    table = _parse_table(metadata)
    if table is None:
        return dict(header_shapes)
    return _dense_shapes(table, header_shapes)


def decode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """The dense state_dict (encoded weights as float32), after checking every part of the file."""
    table = _parse_table(metadata)
    if table is None:
        return dict(tensors)
    _dense_shapes(table, {k: tuple(v.shape) for k, v in tensors.items()})
    dense = {k: v for k, v in tensors.items() if SEP not in k}
    for key, entry in table.items():
        parts = {name: tensors[f"{key}{SEP}{name}"] for name in entry.part_dtypes()}
        _check_parts(key, entry, parts)
        dense[key] = _decode_sparse(key, entry, parts) if entry.kind == "sparse" else _decode_int8(entry, parts)
    return dense


# --- encoding -------------------------------------------------------------------------------------------


def _smallest(tensor: torch.Tensor, *, int8: bool) -> tuple[_Entry, dict[str, torch.Tensor]] | None:
    """The smallest allowed encoding of ``tensor``, or None where plain is as small (or the only choice)."""
    if not tensor.is_floating_point() or tensor.ndim < 2 or not 0 < tensor.numel() <= MAX_ELEMENTS:
        return None
    shape = tuple(tensor.shape)
    rows = tensor.detach().cpu().to(torch.float32).reshape(shape[0], -1)  # (shape[0], rest)
    candidates: list[tuple[_Entry, dict[str, torch.Tensor]]] = []
    if int8 and bool(torch.isfinite(rows).all()):  # an inf or NaN has no int8 scale
        q, scale = _quantize(rows)
        candidates.append((_Entry("int8", shape, "int8"), {"q": q.reshape(shape), "scale": scale}))
        candidates.append((_Entry("sparse", shape, "int8"), {**_sparse(q), "scale": scale}))
    elif tensor.dtype in _LOSSLESS_IN_FLOAT32:
        candidates.append((_Entry("sparse", shape, "float32"), _sparse(rows)))
    if not candidates:
        return None
    best = min(candidates, key=lambda c: _stored_bytes(c[1]))
    plain = tensor.numel() * tensor.element_size() + _PART_OVERHEAD
    return best if _stored_bytes(best[1]) < plain else None


def _stored_bytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() + _PART_OVERHEAD for p in parts.values())


def _quantize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: rows (R, C) float32 -> (q (R, C) int8, scale (R,) float32)."""
    scale = rows.abs().amax(dim=1) / 127  # (R,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero (or underflowing) row: scale 1
    q = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (R, C)
    return q, scale


def _sparse(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """``values`` and ``gaps`` of ``tensor`` flattened row-major, with fillers for gaps over 255."""
    flat = tensor.reshape(-1)
    positions = torch.nonzero(flat).reshape(-1)  # (n,) ascending; NaN counts as nonzero
    previous = torch.cat([positions.new_tensor([-1]), positions[:-1]])
    gaps = positions - previous  # (n,) each >= 1
    fillers = (gaps - 1) // MAX_GAP  # (n,) filler entries before each nonzero
    last = int(positions[-1]) if positions.numel() else -1
    trailing = (flat.numel() - 1 - last) // MAX_GAP  # keeps the tail under 255 zeros (see module doc)
    slots = positions.numel() + int(fillers.sum()) + trailing
    out_gaps = torch.full((slots,), MAX_GAP, dtype=torch.uint8)
    out_values = torch.zeros(slots, dtype=flat.dtype)
    index = torch.arange(positions.numel()) + torch.cumsum(fillers, 0)  # slot of each nonzero, after its fillers
    out_gaps[index] = (gaps - MAX_GAP * fillers).to(torch.uint8)
    out_values[index] = flat[positions]
    return {"values": out_values, "gaps": out_gaps}


# --- validation and decoding ----------------------------------------------------------------------------


def _show(key: str) -> str:
    return repr(key if len(key) <= _SHOWN else key[: _SHOWN - 3] + "...")


def _invalid(message: str) -> InvalidArtifact:
    return InvalidArtifact(message=f"compressed weights: {message}")


def _parse_table(metadata: dict[str, str] | None) -> dict[str, _Entry] | None:
    """The encoding table from safetensors metadata, or None for a plain file."""
    if metadata is None or METADATA_KEY not in metadata:
        return None
    try:
        raw = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise _invalid(f"metadata {METADATA_KEY!r} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise _invalid(f"metadata {METADATA_KEY!r} must be a JSON object")
    return {key: _parse_entry(key, value) for key, value in raw.items()}


def _parse_entry(key: str, raw: Any) -> _Entry:
    if SEP in key:
        raise _invalid(f"encoded key {_show(key)} contains {SEP!r}")
    if not isinstance(raw, dict) or set(raw) != {"kind", "shape", "values"}:
        raise _invalid(f"the entry of {_show(key)} must be an object with exactly kind, shape and values")
    kind, shape, values = raw["kind"], raw["shape"], raw["values"]
    if kind not in ("sparse", "int8"):
        raise _invalid(f"{_show(key)} has unknown kind {str(kind)[:_SHOWN]!r}; expected sparse or int8")
    if values not in ("float32", "int8") or (kind == "int8" and values != "int8"):
        raise _invalid(f"{_show(key)} has values {str(values)[:_SHOWN]!r}; expected float32 or int8 for sparse, int8")
    if (
        not isinstance(shape, list)
        or not 0 < len(shape) <= MAX_DIMS
        or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape)
    ):
        raise _invalid(f"{_show(key)}: shape must be a list of 1 to {MAX_DIMS} positive integers")
    if math.prod(shape) > MAX_ELEMENTS:
        raise _invalid(f"{_show(key)} declares {math.prod(shape)} elements; at most {MAX_ELEMENTS} are allowed")
    return _Entry(kind, tuple(shape), values)


def _dense_shapes(table: dict[str, _Entry], found: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Check that the stored parts are exactly those the table names, with consistent shapes."""
    dense = {k: shape for k, shape in found.items() if SEP not in k}
    claimed: set[str] = set()
    for key, entry in table.items():
        if key in dense:
            raise _invalid(f"{_show(key)} is stored both plain and encoded")
        names = {f"{key}{SEP}{name}": name for name in entry.part_dtypes()}
        missing = sorted(name for part, name in names.items() if part not in found)
        if missing:
            raise _invalid(f"{_show(key)} lacks its part(s) {missing}")
        _check_part_shapes(key, entry, {name: found[part] for part, name in names.items()})
        claimed.update(names)
        dense[key] = entry.shape
    extra = sorted(k for k in found if SEP in k and k not in claimed)
    if extra:
        raise _invalid(f"unexpected part(s) {', '.join(_show(k) for k in extra[:5])}")
    return dense


def _check_part_shapes(key: str, entry: _Entry, shapes: dict[str, tuple[int, ...]]) -> None:
    if "scale" in shapes and shapes["scale"] != entry.shape[:1]:
        raise _invalid(f"{_show(key)}: scale has shape {list(shapes['scale'])}, expected [{entry.shape[0]}]")
    if entry.kind == "int8":
        if shapes["q"] != entry.shape:
            raise _invalid(f"{_show(key)}: q has shape {list(shapes['q'])}, expected {list(entry.shape)}")
        return
    values, gaps = shapes["values"], shapes["gaps"]
    if len(values) != 1 or values != gaps:
        raise _invalid(f"{_show(key)}: values {list(values)} and gaps {list(gaps)} must be 1-d of the same length")
    # Every entry lands on its own position, and every 255 positions hold an entry (fillers pad the tail).
    if not entry.numel <= MAX_GAP * (values[0] + 1) or values[0] > entry.numel:
        raise _invalid(f"{_show(key)}: {values[0]} entries cannot encode {entry.numel} elements")


def _check_parts(key: str, entry: _Entry, parts: dict[str, torch.Tensor]) -> None:
    """Dtypes and scales; shapes were checked by :func:`_dense_shapes`."""
    for name, dtype in entry.part_dtypes().items():
        if parts[name].dtype != dtype:
            found = str(parts[name].dtype).removeprefix("torch.")
            raise _invalid(f"{_show(key)}: {name} is {found}, expected {str(dtype).removeprefix('torch.')}")
    if "scale" in parts and not bool((torch.isfinite(parts["scale"]) & (parts["scale"] > 0)).all()):
        raise _invalid(f"{_show(key)}: scales must be finite and positive")


def _decode_sparse(key: str, entry: _Entry, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    gaps = parts["gaps"].to(torch.int64)  # (n,)
    if bool((gaps == 0).any()):
        raise _invalid(f"{_show(key)}: a gap of 0 would write one position twice")
    positions = torch.cumsum(gaps, 0) - 1  # (n,) strictly increasing
    if positions.numel() and int(positions[-1]) >= entry.numel:
        raise _invalid(f"{_show(key)}: the gaps run past the end of the {entry.numel} elements")
    values = parts["values"].to(torch.float32)  # (n,)
    if "scale" in parts:
        values = values * parts["scale"][positions // (entry.numel // entry.shape[0])]
    dense = torch.zeros(entry.numel, dtype=torch.float32)
    dense[positions] = values
    return dense.reshape(entry.shape)


def _decode_int8(entry: _Entry, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    rows = parts["q"].reshape(entry.shape[0], -1).to(torch.float32)  # (shape[0], rest)
    return (rows * parts["scale"][:, None]).reshape(entry.shape)
