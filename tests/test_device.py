"""Where inference runs and in what precision: defaults, and refusals in one line."""

from __future__ import annotations

import pytest
import torch

from condense.config import ConfigError
from condense.device import inference_device, inference_precision, precision_dtype


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert inference_device("auto").type == expected
    assert inference_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_refused():
    with pytest.raises(ConfigError, match="sees 0 GPU"):
        inference_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        inference_device("gpu0")


def test_auto_precision_is_fp32_on_cpu_and_mixed_on_a_gpu():
    assert inference_precision("auto", torch.device("cpu")) == "32"
    if torch.cuda.is_available():
        assert inference_precision("auto", torch.device("cuda")) in ("bf16-mixed", "16-mixed")
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
