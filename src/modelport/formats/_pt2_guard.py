"""Refuse torch.export archives that would run code while ``torch.export.load`` reads them.

``torch.export.load`` (torch 2.13) is only as safe as the archive: it unpickles weights and
constants marked ``use_pickle`` (``torch.load(weights_only=False)``), falls back to a full unpickle
of the sample inputs when the restricted one fails, loads AOTInductor shared libraries, evaluates
every symbolic-shape string with ``sympy.sympify`` (Python ``eval``), and resolves node targets by
``getattr`` from the ``torch`` module, so ``torch.os.system`` would be a node. This module reads
the archive as zip + JSON only and refuses all of that before torch sees the file.
"""

from __future__ import annotations

import ast
import io
import json
import pickletools
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from modelport.errors import InvalidArtifact, UnsafeFormat

INSTEAD = "a torch.export archive written by torch.export.save with tensor weights only, or ONNX"
_FIXED_MEMBERS = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        "models/model.json",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
        "data/sample_inputs/model.pt",
    }
)
_MEMBER_PATTERNS = (
    re.compile(r"data/weights/weight_\d+"),
    re.compile(r"data/constants/tensor_\d+"),
    re.compile(r"extra/[A-Za-z0-9_.-]+"),
)
_MAX_JSON_BYTES = 256 * 1024 * 1024
_MAX_EXPR_CHARS = 4000
_MAX_POW = 4
# fmt: off
# what torch.save writes for a tuple of plain tensors (protocol 2); anything else is refused
_SAMPLE_GLOBALS = frozenset(
    {
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device"),
    }
    | {
        ("torch", f"{kind}Storage")
        for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
                     "ComplexFloat", "ComplexDouble", "Untyped")
    }
)
# the symbolic-shape operators torch.export may emit as plain Python callables
_SYM_TARGETS = frozenset(
    {
        f"_operator.{n}"
        for n in ("eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv", "mod", "pow",
                  "truediv", "and_", "or_", "lshift", "rshift", "getitem", "not_")
    }
    | {f"math.{n}" for n in ("trunc", "floor", "ceil", "sqrt")}
    | {f"torch.sym_{n}" for n in ("not", "int", "float", "ite", "max", "min", "sqrt", "sum")}
)
# sympy constructors and torch.utils._sympy.functions.__all__ (torch 2.13): what shape formulas call
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or",
    "Not", "Mul", "Add", "Pow", "sqrt", "floor", "ceiling", "Piecewise", "ITE", "FloorDiv", "ModularIndexing",
    "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "IntTrueDiv", "FloatTrueDiv",
    "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity",
})
_SYMPY_ASSUMPTIONS = frozenset({
    "integer", "positive", "nonnegative", "negative", "nonpositive", "real", "finite", "zero", "nonzero",
})
_UNSAFE_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})
_OP_TARGET_RE = re.compile(r"torch\.ops\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){1,2}")
_EXPR_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Name, ast.Constant,
    ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)
# guards read sizes off inputs: "L['x'].size()[0] <= 1024", "math.isnan(L['t'])"; no keywords
_GUARD_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Name, ast.Constant,
    ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.Subscript, ast.Attribute,
)
# fmt: on
_GUARD_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "isnan", "inf", "floor", "ceil", "trunc"})
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN_RE = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")


def check_archive(path: Path, filename: str) -> None:
    """Raise UnsafeFormat/InvalidArtifact unless ``path`` is a plain, tensor-only pt2 archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, filename)
            _check_payload_config(archive, members, "data/weights/model_weights_config.json", "weight_", filename)
            _check_payload_config(archive, members, "data/constants/model_constants_config.json", "tensor_", filename)
            if "data/sample_inputs/model.pt" in members:
                _check_sample_inputs(archive.read(members["data/sample_inputs/model.pt"]), filename)
            program = _read_json(archive, members["models/model.json"], filename)
    except (zipfile.BadZipFile, EOFError, NotImplementedError):  # NotImplementedError: zip version/method
        raise InvalidArtifact(message=f"{filename!r} is not a readable zip archive") from None
    check_program(program, filename)


def _members(archive: zipfile.ZipFile, filename: str) -> dict[str, str]:
    """Map root-relative member names to archive names; refuse anything torch 2.13 would execute."""
    names = archive.namelist()
    if len(set(names)) != len(names):
        # Python's zipfile reads the last of two same-named members, torch's reader the first
        raise _refuse(filename, "it holds two members with the same name")
    roots = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(roots) != 1:
        raise InvalidArtifact(message=f"{filename!r} is not a torch.export archive (one root folder expected)")
    root = roots.pop()
    members = {n[len(root) + 1 :]: n for n in names if n.startswith(root + "/") and not n.endswith("/")}
    if "serialized_exported_program.json" in members:
        raise InvalidArtifact(
            message=f"{filename!r} uses the pre-2.8 torch.export layout; re-save it with torch.export.save"
        )
    unknown = [m for m in members if m not in _FIXED_MEMBERS and not any(p.fullmatch(m) for p in _MEMBER_PATTERNS)]
    if unknown:
        raise UnsafeFormat(
            filename=filename,
            reason=f"it holds members Modelport does not load ({', '.join(sorted(unknown)[:5])}): "
            "pickled objects, compiled AOTInductor code or extra programs",
            instead=INSTEAD,
        )
    for required in ("archive_format", "archive_version", "models/model.json"):
        if required not in members:
            raise InvalidArtifact(message=f"{filename!r} is not a torch.export archive (no {required})")
    if archive.read(members["archive_format"]).strip() != b"pt2":
        raise InvalidArtifact(message=f"{filename!r} is not a pt2 archive")
    return members


def _read_json(archive: zipfile.ZipFile, name: str, filename: str) -> Any:
    if archive.getinfo(name).file_size > _MAX_JSON_BYTES:
        raise InvalidArtifact(message=f"{filename!r}: {PurePosixPath(name).name} is too large")
    try:
        return json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArtifact(message=f"{filename!r}: {PurePosixPath(name).name} is not valid JSON") from None


def _check_payload_config(
    archive: zipfile.ZipFile, members: dict[str, str], config: str, prefix: str, filename: str
) -> None:
    """Every weight/constant must be raw tensor bytes, never a pickle or a custom/opaque object."""
    if config not in members:
        return
    entries = _read_json(archive, members[config], filename).get("config", {})
    if not isinstance(entries, dict):
        raise InvalidArtifact(message=f"{filename!r}: malformed {PurePosixPath(config).name}")
    for fqn, meta in entries.items():
        _check_fqn(fqn, filename)
        raw_tensor = isinstance(meta, dict) and not meta.get("use_pickle")
        if not (raw_tensor and str(meta.get("path_name", "")).startswith(prefix)):
            raise _refuse(filename, f"its tensor {str(fqn)[:64]!r} is stored as a pickled object")


def _check_sample_inputs(data: bytes, filename: str) -> None:
    """Disassemble (never run) the sample-inputs pickle and allow only tensor-rebuilding globals.

    torch.export.load retries a failed restricted unpickle with a full one, so the only safe
    sample inputs are ones whose every global the restricted unpickler accepts anyway.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as nested:
            names = nested.namelist()
            pickles = [n for n in names if n.endswith(".pkl")]
            if len(set(names)) != len(names) or len(pickles) != 1 or not pickles[0].endswith("data.pkl"):
                raise UnsafeFormat(filename=filename, reason="its sample inputs are not plain tensors", instead=INSTEAD)
            payload = nested.read(pickles[0])
    except (zipfile.BadZipFile, EOFError, NotImplementedError):
        raise UnsafeFormat(filename=filename, reason="its sample inputs are a raw pickle", instead=INSTEAD) from None
    try:
        for opcode, arg, _ in pickletools.genops(payload):
            if opcode.name in _UNSAFE_OPCODES or (
                opcode.name == "GLOBAL" and tuple(str(arg).split(" ", 1)) not in _SAMPLE_GLOBALS
            ):
                raise UnsafeFormat(
                    filename=filename,
                    reason=f"its sample inputs reference {str(arg)[:80]!r} ({opcode.name})",
                    instead=INSTEAD,
                )
    except ValueError:
        raise _refuse(filename, "its sample inputs are a malformed pickle") from None


def check_program(program: Any, filename: str) -> None:
    """Walk the serialized program and refuse anything that would reach ``eval``/``exec``.

    Node targets must be torch operators; shape formulas and guards plain arithmetic; names that
    torch's code generator pastes into Python source (forward argument names, attribute paths)
    plain identifiers; and no text but stack traces may hold line breaks, which would end the
    ``# File: ...`` comments FX writes into generated code.
    """
    if not isinstance(program, dict):
        raise InvalidArtifact(message=f"{filename!r}: the serialized program is not a JSON object")
    for key, value in _walk(program):
        if isinstance(value, str):
            _check_text(key, value, filename)
        check = _KEY_CHECKS.get(key)
        if check is not None:
            check(value, filename)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Yield (key, value) for every dict item, and ("key[]", item) for scalars in a list under "key"."""
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, dict):
            for sub_key, value in item.items():
                yield str(sub_key), value
                if isinstance(value, dict | list):
                    stack.append((str(sub_key), value))
        elif isinstance(item, list):
            for value in item:
                if isinstance(value, dict | list):
                    stack.append((key, value))
                else:
                    yield f"{key}[]", value


def _refuse(filename: str, reason: str) -> UnsafeFormat:
    return UnsafeFormat(filename=filename, reason=reason, instead=INSTEAD)


def _check_text(key: str, text: str, filename: str) -> None:
    if _CONTROL_RE.search(text) or ("\n" in text and key != "stack_trace"):
        raise _refuse(filename, f"its program has a line break or control character in {key or 'a string'!r}")


def _check_target(target: Any, filename: str) -> None:
    if not isinstance(target, str) or target in _SYM_TARGETS:
        return
    if "__" not in target and _OP_TARGET_RE.fullmatch(target):
        resolved: Any = torch
        for part in target.split(".")[1:]:
            resolved = getattr(resolved, part, None)
            if resolved is None:
                break
        ops = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
        if isinstance(resolved, ops):
            return
        raise InvalidArtifact(
            message=f"{filename!r} calls operator {target[:100]!r}, which is not registered in this server"
        )
    raise _refuse(filename, f"its graph calls {target[:100]!r}, which is not a torch operator")


def _check_fqn(value: Any, filename: str) -> None:
    if value is not None and value != "" and not (isinstance(value, str) and _FQN_RE.fullmatch(value)):
        raise _refuse(filename, f"it names a weight {str(value)[:80]!r} that is not a plain attribute path")


def _check_arg_names(value: Any, filename: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and _plain_name(v) for v in value):
        raise _refuse(filename, "its forward argument names are not plain identifiers")


def _check_user_input(value: Any, filename: str) -> None:
    arg = value.get("arg") if isinstance(value, dict) else None
    if not (isinstance(arg, dict) and set(arg) == {"as_tensor"}):
        raise InvalidArtifact(
            message=f"{filename!r}: Modelport serves torch.export programs whose inputs are all tensors"
        )


def _check_in_spec(value: Any, filename: str) -> None:
    """The forward must take positional tensors only: tuple(tuple(leaf, ...), dict with no keys)."""
    try:
        _, root = json.loads(value)
        args, kwargs = root["children_spec"]
        positional = root["type"] == "builtins.tuple" and args["type"] == "builtins.tuple"
        leaves = all(c["type"] is None and not c["children_spec"] for c in args["children_spec"])
        no_kwargs = kwargs["type"] == "builtins.dict" and json.loads(kwargs["context"]) == []
    except (TypeError, ValueError, KeyError):
        positional = leaves = no_kwargs = False
    if not (positional and leaves and no_kwargs):
        raise InvalidArtifact(
            message=f"{filename!r}: Modelport serves torch.export programs that take tensors as "
            "positional arguments only"
        )


def _check_guards(value: Any, filename: str) -> None:
    for guard in value if isinstance(value, list) else [value]:
        problem = _expr_problem(guard, guard_code=True)
        if problem:
            raise _refuse(filename, f"an input guard {problem}")


def _check_expr(value: Any, filename: str) -> None:
    problem = _expr_problem(value, guard_code=False)
    if problem:
        raise _refuse(filename, f"a shape formula {problem}")


def _check_json_text(value: Any, filename: str) -> None:
    """``custom`` and ``from_node`` metadata are JSON inside a string; FX prints parts of them."""
    if not isinstance(value, str) or not value:
        return
    try:
        decoded = json.loads(value)
    except ValueError:
        raise _refuse(filename, "its node metadata is malformed") from None
    for key, item in _walk({"": decoded}):
        if isinstance(item, str):
            _check_text(key, item, filename)


def _expr_problem(text: Any, *, guard_code: bool) -> str | None:
    """Why ``text`` is not plain symbolic arithmetic, or None when it is."""
    if not isinstance(text, str) or len(text) > _MAX_EXPR_CHARS:
        return "is not a short string"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return "is not an expression"
    pows = 0
    for node in ast.walk(tree):
        problem = _node_problem(node, guard_code)
        if problem:
            return problem
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            pows += 1
            exponent = node.right.value if isinstance(node.right, ast.Constant) else None
            if pows > _MAX_POW or not isinstance(exponent, int) or abs(exponent) > 8:
                return "raises to a large or symbolic power"
    return None


def _node_problem(node: ast.AST, guard_code: bool) -> str | None:
    allowed = _GUARD_NODES if guard_code else _EXPR_NODES
    if not isinstance(node, allowed):
        return f"uses {type(node).__name__}"
    if isinstance(node, ast.Name) and not _plain_name(node.id):
        return f"uses the name {node.id[:40]!r}"
    if isinstance(node, ast.Attribute) and node.attr not in _GUARD_ATTRS:
        return f"reads the attribute {node.attr[:40]!r}"
    if isinstance(node, ast.Call) and not _plain_call(node.func):
        return "calls something other than a shape function"
    if isinstance(node, ast.keyword) and not (node.arg in _SYMPY_ASSUMPTIONS and isinstance(node.value, ast.Constant)):
        return "passes an unexpected keyword"
    if isinstance(node, ast.Constant) and not _plain_constant(node.value):
        return "holds an unexpected constant"
    return None


def _plain_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _SYMPY_CALLS
    return isinstance(func, ast.Attribute) and func.attr in _GUARD_ATTRS


def _plain_name(name: str) -> bool:
    return "__" not in name and _NAME_RE.fullmatch(name) is not None


def _plain_constant(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) < 2**63
    if isinstance(value, float):
        return True
    return isinstance(value, str) and _plain_name(value)


_KEY_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "target": _check_target,
    "as_operator": _check_target,
    "expr_str": _check_expr,
    "guards_code": _check_guards,
    "forward_arg_names": _check_arg_names,
    "in_spec": _check_in_spec,
    "user_input": _check_user_input,
    "parameter_name": _check_fqn,
    "buffer_name": _check_fqn,
    "tensor_constant_name": _check_fqn,
    "custom_obj_name": _check_fqn,
    "fqn": _check_fqn,
    "custom": _check_json_text,
    "from_node": _check_json_text,
}
