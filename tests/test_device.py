"""Where inference runs and in what precision: defaults, and refusals in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from condense.artifact import ArtifactError
from condense.config import ConfigError
from condense.device import inference_device, inference_precision, precision_dtype


@pytest.mark.parametrize(("gpus", "expected"), [(0, "cpu"), (1, "cuda")])
def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu(gpus, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    assert inference_device("auto").type == expected
    assert inference_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_refused():
    with pytest.raises(ConfigError, match="sees 0 GPU"):
        inference_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        inference_device("gpu0")


@pytest.mark.parametrize(("bf16", "on_gpu"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_is_fp32_on_cpu_and_mixed_on_a_gpu(bf16, on_gpu, monkeypatch):
    import contextlib

    # A V100 or T4 emulates bf16: 16-mixed there.
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: bf16)
    assert inference_precision("auto", torch.device("cuda")) == on_gpu
    assert inference_precision("auto", torch.device("cpu")) == "32"
    assert inference_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"
    with pytest.raises(ConfigError, match="one of"):
        inference_precision("fp8", torch.device("cpu"))


def test_mixed_precision_stores_the_frozen_weights_low():
    assert precision_dtype("32") == torch.float32
    assert precision_dtype("bf16-mixed") == torch.bfloat16
    assert precision_dtype("16-mixed") == torch.float16
    assert precision_dtype("32-true") == torch.float32
    assert precision_dtype("64-true") == torch.float64


def test_bf16_inference_on_a_cpu_that_emulates_it_warns(monkeypatch, recwarn):
    from condense import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert inference_precision("auto", torch.device("cpu")) == "32"
    assert not recwarn.list
    with pytest.warns(UserWarning, match="emulated, ~20x slower than fp32"):
        assert inference_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"


def test_the_emulated_bf16_warning_names_the_callers_line_and_comes_from_rank_0_alone(
    monkeypatch, tmp_path, recwarn
):
    """Loading an artifact in bf16 on such a CPU points the warning at the line that asked
    (here), not inside condense; a DDP rank other than 0 stays quiet, as its rank 0 says it."""
    from lightning.pytorch.utilities import rank_zero_only

    from condense import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    emulated = pytest.warns(UserWarning, match="emulated")
    missing = pytest.raises(ArtifactError, match="not a condense artifact")
    with emulated as record, missing:
        device.load_for_inference(str(tmp_path), "cpu", "bf16-mixed")
    assert [w.filename for w in record] == [__file__]
    recwarn.clear()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert device.inference_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"
    assert not [w for w in recwarn.list if "emulated" in str(w.message)]


def test_condense_plan_does_not_load_lightning_for_the_warning():
    code = "import sys, condense.plan; print('lightning.pytorch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
