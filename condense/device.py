"""Where training and inference run, and in what precision.

Training resolves its precision here and leaves the device to Lightning; inference
(`condense eval`, `condense generate`) picks both. By default a GPU runs inference
in bf16-mixed as training did: the frozen models stored in bf16 (Condenser.autocast then
autocasts to it), the trained tensors in fp32. A CPU runs it in fp32, the precision the
README's evaluation numbers were made in.
"""

from __future__ import annotations

import os
import sys
import warnings

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
        if device.type == "cpu":
            warn_if_bf16_is_emulated(choice)
        return choice
    return gpu_mixed_precision(device) if device.type == "cuda" else "32"


def gpu_mixed_precision(device: torch.device | None = None) -> str:
    """bf16-mixed where the GPU has bf16 natively, else 16-mixed (training's choice too)."""
    # Emulated bf16 (V100, T4) is far slower than their fp16.
    with torch.cuda.device(device):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native else "16-mixed"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), as oneDNN sees it.
    Without it bf16 products are emulated: slower than fp32, not faster."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_training_precision() -> str:
    """Training's "auto" on a CPU: bf16-mixed where it has bf16 units, else 32-true."""
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def warn_if_bf16_is_emulated(precision: str) -> None:
    """Warn where `precision`, run on this CPU, would compute in bf16 that it emulates;
    once, from rank 0 alone where DDP runs one process per device. The warning names the
    first line outside condense that led to it."""
    if not precision.startswith("bf16") or cpu_has_bf16():
        return
    # Imported here: `condense plan` uses this module and need not load Lightning.
    from lightning.pytorch.utilities import rank_zero_only

    # Every DDP rank resolves the precision; all but rank 0 (as Lightning reads it from
    # the environment the launcher set) would repeat the same line.
    if rank_zero_only.rank == 0:
        # Measured on an AVX2-only CPU: the test job's training step took 26.6 s in
        # bf16-mixed, 1.40 s in 32-true.
        warnings.warn(
            f"condense: --precision {precision} on a CPU without bf16 units runs bf16"
            " emulated, ~20x slower than fp32 (--precision auto picks fp32 here)",
            stacklevel=_levels_inside_condense() + 1,
        )


def _levels_inside_condense() -> int:
    """How many frames up from its caller the code leaves the condense package: a
    `stacklevel` that works whichever entry point (train, bench, eval) led here.
    (Python 3.12's `warnings.warn(skip_file_prefixes=...)` does this; 3.10 is supported.)"""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 0
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


# Lightning's short precision names, spelled out as Lightning reads them: the weights'
# dtype, autocast, loss scaling and bench's peak all go by the full name.
PRECISION_ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


# Float16 precisions, and why they do not train on a CPU.
FLOAT16_ON_CPU = {
    "16-mixed": "torch's CPU autocast to float16 fails in the encoder",
    # The tiny test pair validated at nan by step 4, with no word but "final nan".
    "16-true": "on a CPU its float16 losses become nan",
}


def check_devices(accelerator: str) -> None:
    """Refuse an accelerator this machine does not have, before anything is loaded."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"accelerator={accelerator} but torch sees no GPU on this machine"
            " (use --accelerator cpu or auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("accelerator=mps but this machine has no MPS device")


def resolve_precision(precision: str, accelerator: str) -> str:
    """The full Lightning name of `precision` ("bf16" -> bf16-mixed, "32" -> 32-true);
    "auto" -> bf16-mixed where the hardware has bf16 (GPU or CPU), else 16-mixed on a GPU
    without it, else 32-true. bf16 asked for on a CPU that would emulate it warns."""
    if precision == "auto":
        return gpu_mixed_precision() if on_gpu(accelerator) else cpu_training_precision()
    precision = PRECISION_ALIASES.get(precision, precision)
    if not on_gpu(accelerator):
        warn_if_bf16_is_emulated(precision)
    return precision


def on_gpu(accelerator: str) -> bool:
    """Whether a job with this Lightning `accelerator` runs on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


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
