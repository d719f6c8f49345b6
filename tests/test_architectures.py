"""Architectures other than the tiny pair's Llama and GPT-2, in either role: each loads as
condense loads a model (from a folder, with the attention it chooses), is causal as a
decoder (Bloom and XGLM were not under condense's attention), trains a step
(gradients reach the projection and LoRA), scores a batch as the decoder's own forward
scores it, and generates."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from condense.config import ConfigError, ModelConfig
from condense.generate import generate
from condense.model import IGNORE_INDEX, Condenser, token_embeddings
from condense.weights import (
    ModelNotFoundError,
    check_attends_back_only,
    check_causal_lm,
    load_causal_lm,
    load_tokenizer,
)

VOCAB = 400  # the tiny pair's tokenizers give ids below it
LLAMA_LIKE = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
CONFIGS = {
    "falcon": lambda: T.FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
    ),
    "gpt_neox": lambda: T.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    ),
    "gptj": lambda: T.GPTJConfig(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=256
    ),
    "gpt_bigcode": lambda: T.GPTBigCodeConfig(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256
    ),
    "gpt_neo": lambda: T.GPTNeoConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=256,
    ),
    "opt": lambda: T.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=256,
    ),
    "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
    "mpt": lambda: T.MptConfig(
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=256
    ),
    "xglm": lambda: T.XGLMConfig(
        vocab_size=VOCAB,
        d_model=32,
        ffn_dim=64,
        num_layers=2,
        attention_heads=4,
        max_position_embeddings=256,
    ),
    "mistral": lambda: T.MistralConfig(**LLAMA_LIKE, sliding_window=8),
    "qwen2": lambda: T.Qwen2Config(**LLAMA_LIKE),
    "qwen3": lambda: T.Qwen3Config(**LLAMA_LIKE, head_dim=8),
    "phi3": lambda: T.Phi3Config(**{**LLAMA_LIKE, "num_key_value_heads": 4}, pad_token_id=0),
    "stablelm": lambda: T.StableLmConfig(**LLAMA_LIKE),
    "starcoder2": lambda: T.Starcoder2Config(**LLAMA_LIKE),
    "olmo2": lambda: T.Olmo2Config(**LLAMA_LIKE),
    "cohere": lambda: T.CohereConfig(**LLAMA_LIKE, logit_scale=0.0625),
    "granite": lambda: T.GraniteConfig(**LLAMA_LIKE, embedding_multiplier=12.0, logits_scaling=8.0),
    "mixtral": lambda: T.MixtralConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "gemma": lambda: T.GemmaConfig(**LLAMA_LIKE, head_dim=8),
    "gemma2": lambda: T.Gemma2Config(**LLAMA_LIKE, head_dim=8),  # soft-capped attention
    "gemma3_text": lambda: T.Gemma3TextConfig(**LLAMA_LIKE, head_dim=8),
    "recurrent_gemma": lambda: T.RecurrentGemmaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        lru_width=32,
        attention_window_size=64,
        block_types=["recurrent", "recurrent", "attention"],
    ),
    "rwkv": lambda: T.RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        attention_hidden_size=32,
        intermediate_size=64,
        context_length=256,
    ),
    "falcon_h1": lambda: T.FalconH1Config(
        **LLAMA_LIKE,
        head_dim=8,
        mamba_d_ssm=32,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_state=8,
        mamba_chunk_size=16,
        embedding_multiplier=4.0,  # applied to input_ids only, not inputs_embeds
    ),
    "mamba": lambda: T.MambaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4
    ),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each architecture's tiny random model, saved as a folder (loaded on first use)."""
    root = tmp_path_factory.mktemp("architectures")

    def folder(kind: str) -> str:
        path = root / kind
        if not path.exists():
            torch.manual_seed(0)
            T.AutoModelForCausalLM.from_config(CONFIGS[kind]()).save_pretrained(path)
        return str(path)

    return folder


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    context = torch.randint(5, 300, (2, 10), generator=generator)
    ids = torch.randint(5, 300, (2, 8), generator=generator)
    context_mask, mask = torch.ones_like(context), torch.ones_like(ids)
    context_mask[1, 7:], mask[1, 6:] = 0, 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX  # the prompt
    return {
        "context_ids": context,
        "context_mask": context_mask,
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
    }


@pytest.mark.parametrize("role", ["encoder", "decoder"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_an_architecture_trains_scores_and_generates(kind, role, saved, tiny_pair):
    model = load_causal_lm(saved(kind))
    if kind == "falcon_h1" and role == "decoder":  # transformers' generate() refuses
        with pytest.raises(ModelNotFoundError, match="cannot generate from input embeddings"):
            check_causal_lm(model.config, kind, role)
        return
    if role == "decoder":  # as training checks it: no position sees the tokens after it
        check_attends_back_only(model, kind)
    other = load_causal_lm(tiny_pair[1] if role == "encoder" else tiny_pair[0])
    encoder, decoder = (model, other) if role == "encoder" else (other, model)
    # peft refuses all-linear for Mamba layers (as below); attention alone adapts here.
    targets = ["q_proj", "v_proj"] if kind == "falcon_h1" else "all-linear"
    cfg = ModelConfig(
        encoder="e",
        decoder="d",
        num_condense_tokens=4,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=targets,
    )
    if kind == "mamba" and role == "encoder":
        with pytest.raises(ConfigError, match="lora_target_modules=all-linear: .*Mamba"):
            Condenser(encoder, decoder, cfg)
        return
    torch.manual_seed(0)
    condenser = Condenser(encoder, decoder, cfg)
    condenser.decoder_tokenizer = load_tokenizer(tiny_pair[1])
    batch = _batch()
    if role == "encoder":  # the context's tokens, as the encoder's own forward embeds them
        ids = batch["context_ids"][:1]
        with torch.no_grad():
            ours = condenser.encoder_body(inputs_embeds=token_embeddings(encoder, ids))
            own = condenser.encoder_body(input_ids=ids)
        torch.testing.assert_close(ours.last_hidden_state, own.last_hidden_state)

    loss, _ = condenser(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert condenser.projection.weight.grad.abs().sum() > 0
    lora = [p.grad for name, p in condenser.named_parameters() if "lora_B" in name]
    assert lora and all(g is not None for g in lora)

    condenser.eval()
    with torch.no_grad():
        condensed = condenser.encode(batch["context_ids"][:1], batch["context_mask"][:1])
        ids, labels = batch["input_ids"][:1], batch["labels"][:1]
        ours, _ = condenser.decoder_loss(condensed, ids, batch["attention_mask"][:1], labels)
        embeds = torch.cat([condensed, decoder.get_input_embeddings()(ids)], 1)
        unscored = torch.full((1, 4), IGNORE_INDEX)
        own = decoder(inputs_embeds=embeds, labels=torch.cat([unscored, labels], 1)).loss
        (answer,) = generate(condenser, condensed, ["Where?\n"], max_new_tokens=3)
    torch.testing.assert_close(ours, own, rtol=1e-4, atol=1e-5)
    assert isinstance(answer, str)
