import pytest
import torch
import torch.nn.functional as F

from condense import attention
from condense.attention import blocked_causal_attention, causal_attention
from condense.weights import load_causal_lm


def _qkv(batch=2, heads=6, groups=2, length=37, dim=8, dtype=torch.float64):
    torch.manual_seed(0)
    shapes = [(batch, heads, length, dim), *[(batch, groups, length, dim)] * 2]
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


@pytest.mark.parametrize("heads,groups,length", [(6, 2, 37), (4, 4, 9), (3, 1, 4)])
def test_blocks_give_causal_attention_and_its_gradients(heads, groups, length):
    """Grouped-query or not, lengths that do not divide into the blocks: the same
    output and the same gradients for queries, keys and values as causal SDPA."""
    q, k, v = _qkv(heads=heads, groups=groups, length=length)
    grad = torch.randn_like(q)
    out = blocked_causal_attention(q, k, v, q.shape[-1] ** -0.5)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = _sdpa(q, k, v)
    expected = torch.autograd.grad(want, (q, k, v), grad)
    # The scores are fp32 whatever the inputs, as under bf16 autocast.
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 3


def test_compiled_attention_takes_the_blocks_and_matches_sdpa(monkeypatch):
    """Inside torch.compile (dynamic shapes, as the compiled blocks run) on CPU the blocks
    are taken, and give what SDPA gives, forward and backward."""
    calls = []
    blocked = attention.blocked_causal_attention
    monkeypatch.setattr(
        attention, "blocked_causal_attention", lambda *a: calls.append(1) or blocked(*a)
    )
    q, k, v = _qkv(heads=6, groups=2, length=21, dtype=torch.float32)
    compiled = torch.compile(
        lambda q, k, v: causal_attention(_Module(), q, k, v, None)[0], dynamic=True
    )
    out = compiled(q, k, v)
    (out * out).sum().backward()
    got = [t.grad for t in (q, k, v)]
    assert calls, "the compiled call did not take the blocks"

    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    want = _sdpa(q2, k2, v2).transpose(1, 2)
    (want * want).sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    for a, b in zip(got, (q2.grad, k2.grad, v2.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_eager_calls_and_padding_masks_are_sdpa(tiny_pair):
    """Outside torch.compile, and wherever there is a padding mask, a model loaded by
    condense gives exactly what the same model gives with transformers' SDPA."""
    model = load_causal_lm(tiny_pair[0]).eval()
    assert model.config._attn_implementation == attention.NAME
    ids = torch.randint(4, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        ours = [model(input_ids=ids).logits, model(input_ids=ids, attention_mask=mask).logits]
        model.set_attn_implementation("sdpa")
        theirs = [model(input_ids=ids).logits, model(input_ids=ids, attention_mask=mask).logits]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kind", "chosen"),
    [
        ("mistral", attention.NAME),
        ("falcon", "sdpa"),  # declares no registered attention (reads the registry all the same)
        ("gpt_neo", "eager"),  # was KeyError: 'condense' at load: no registered attention
        ("gemma2", "eager"),  # SDPA refuses its soft-capped scores: failed at validation
    ],
)
def test_a_model_loads_with_the_attention_its_architecture_can_run(kind, chosen, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.test_architectures import CONFIGS

    AutoModelForCausalLM.from_config(CONFIGS[kind]()).save_pretrained(tmp_path)
    assert attention.implementation_for(CONFIGS[kind]()) == chosen
    assert load_causal_lm(str(tmp_path)).config._attn_implementation == chosen
