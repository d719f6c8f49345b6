"""Where inference (`condense eval`, `condense generate`) runs, and in what precision.

Training leaves this to Lightning; inference picks for itself. By default a GPU runs it in
bf16-mixed as training did: the frozen models stored in bf16 (Condenser.autocast then
autocasts to it), the trained tensors in fp32. A CPU runs it in fp32, the precision the
README's evaluation numbers were made in.
"""

from __future__ import annotations

import torch

from condense.config import ConfigError
from condense.model import Condenser

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")


def inference_device(choice: str = "auto") -> torch.device:
    """ "auto" -> the first CUDA GPU if torch sees one, else the CPU; "cuda:1", "cpu", ...
    as given, refused in one line where this machine does not have it."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ConfigError(
            f"--device {choice!r} is not a device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ConfigError(f"--device {choice} but torch sees {count} GPU(s) on this machine")
    elif device.type != "cpu":
        raise ConfigError(f"--device {choice}: inference runs on cpu or cuda")
    return device


def inference_precision(choice: str, device: torch.device) -> str:
    """ "auto" -> bf16-mixed on a GPU that has bf16, 16-mixed on one that does not, 32 on CPU."""
    if choice not in PRECISIONS:
        raise ConfigError(f"--precision {choice!r}: one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    return gpu_mixed_precision(device) if device.type == "cuda" else "32"


def gpu_mixed_precision(device: torch.device | None = None) -> str:
    """bf16-mixed where the GPU has bf16 natively, else 16-mixed (training's choice too)."""
    # Emulated bf16 (V100, T4) is far slower than their fp16.
    with torch.cuda.device(device):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native else "16-mixed"


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype a Lightning `precision` string computes in: the frozen models are stored
    in it, autocast runs in it under "-mixed", and every parameter is cast to it under
    "-true" (trainable parameters stay fp32 under "-mixed")."""
    kind = precision.split("-")[0]
    dtypes = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}
    return dtypes.get(kind, torch.float32)


def load_for_inference(
    artifact: str, device: str = "auto", precision: str = "auto"
) -> tuple[Condenser, torch.device, str]:
    """An artifact's condenser on the device and in the precision chosen as above, and
    the device and precision it came to."""
    where = inference_device(device)
    precision = inference_precision(precision, where)
    return Condenser.from_pretrained(artifact, precision_dtype(precision), where), where, precision
