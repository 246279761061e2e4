"""Where a model runs: ``cpu``, or ``cuda`` (the process's current NVIDIA GPU), set per model in its
deployment settings (``PUT /v1/models/{name}/deployment {"device": "cuda"}``).

ONNX models run on ONNX Runtime's CUDA provider where the installed onnxruntime has it (the
``onnxruntime-gpu`` wheel), torch models (torch, torchscript, torch_export) on torch's CUDA device;
scikit-learn and Keras models serve on the CPU only. A device that this process cannot use is refused
with a message that says why, when the deployment is set and again when a version loads, never with a
crash or a silent fall back to the CPU.

torch and onnxruntime are imported here only when asked: the registry side imports this module too.
"""

from __future__ import annotations

from typing import Any, Literal

from modelport.errors import Unavailable

Device = Literal["cpu", "cuda"]
TORCH_FORMATS = frozenset({"torch", "torchscript", "torch_export"})


def onnx_cuda() -> bool:
    """Whether the installed onnxruntime has its CUDA provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_cuda() -> bool:
    """Whether torch sees a CUDA GPU."""
    import torch

    return bool(torch.cuda.is_available())


def why_not(device: Device, fmt: str | None = None) -> str | None:
    """Why this process cannot serve format ``fmt`` (any format, without one) on ``device``; None if it can."""
    if device == "cpu":
        return None
    if fmt is not None and fmt != "onnx" and fmt not in TORCH_FORMATS:
        return f"format {fmt} serves on the CPU only"
    onnx_ok = fmt in (None, "onnx") and onnx_cuda()
    torch_ok = (fmt is None or fmt in TORCH_FORMATS) and torch_cuda()
    if onnx_ok or torch_ok:
        return None
    if fmt == "onnx":
        return "this server's onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if fmt in TORCH_FORMATS:
        return "torch sees no CUDA GPU on this server"
    return "this server has no CUDA: torch sees no GPU and onnxruntime has no CUDAExecutionProvider"


def require(device: Device, fmt: str) -> None:
    """Unavailable (503) unless this process can serve ``fmt`` on ``device``."""
    reason = why_not(device, fmt)
    if reason is not None:
        raise Unavailable(message=f"cannot serve on {device}: {reason}")


def onnx_providers(device: Device) -> list[str]:
    require(device, "onnx")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def confirm_onnx(device: Device, active: list[str]) -> None:
    """Unavailable (503) unless a session opened for ``device`` really runs there (``active``: its
    ``get_providers()``). onnxruntime falls back to the CPU by itself when its CUDA provider cannot
    start (the CUDA runtime or cuDNN it was built for missing), with only a line in the log."""
    if device == "cuda" and "CUDAExecutionProvider" not in active:
        raise Unavailable(
            message="cannot serve on cuda: onnxruntime could not start its CUDA provider (the CUDA and cuDNN "
            "libraries its onnxruntime-gpu build needs); the server log has onnxruntime's reason"
        )


def torch_device(device: Device, fmt: str) -> Any:
    """The ``torch.device`` for ``device`` (checked first)."""
    import torch

    require(device, fmt)
    return torch.device(device)
