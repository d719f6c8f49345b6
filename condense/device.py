"""Where inference (`condense eval`, `condense generate`) runs, and in what precision.

Training leaves this to Lightning; inference picks for itself. By default a GPU runs it in
bf16-mixed as training did: the frozen models stored in bf16 (Condenser.autocast then
autocasts to it), the trained tensors in fp32. A CPU runs it in fp32, the precision the
README's evaluation numbers were made in.
"""

from __future__ import annotations

import torch

from condense.config import ConfigError

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
    if device.type != "cuda":
        return "32"
    # Emulated bf16 (V100, T4) is far slower than their fp16.
    with torch.cuda.device(device):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native else "16-mixed"


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype the frozen models are stored in for `precision` (as in training)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)
