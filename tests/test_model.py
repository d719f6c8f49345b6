"""The condenser's math: masking, padding, which weights train, and the loss itself."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from condense.batches import Collator
from condense.config import ConfigError, DatasetConfig, ModelConfig
from condense.data import tokenize
from condense.model import IGNORE_INDEX, Condenser
from condense.synthetic import long_synthetic_samples, synthetic_samples
from condense.weights import load_causal_lm, load_tokenizer


def _build(tiny_pair, dtype=torch.float32, **model_overrides):
    torch.manual_seed(0)
    encoder, decoder = tiny_pair
    cfg = ModelConfig(
        encoder=encoder, decoder=decoder, num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    for k, v in model_overrides.items():
        setattr(cfg, k, v)
    enc_tok, dec_tok = load_tokenizer(encoder), load_tokenizer(decoder)
    condenser = Condenser(load_causal_lm(encoder, dtype), load_causal_lm(decoder, dtype), cfg)
    # Non-zero LoRA B, so the adapter really changes the encoder in these tests.
    for name, p in condenser.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return condenser, enc_tok, dec_tok


def _batch(enc_tok, dec_tok, samples, train_on_prompt=False):
    cfg = DatasetConfig(max_tokens=96, train_on_prompt=train_on_prompt)
    items = tokenize(samples, enc_tok, dec_tok, cfg)
    return Collator(enc_tok.pad_token_id, dec_tok.pad_token_id)(items)


def _pad_more(batch, extra: int, enc_pad: int, dec_pad: int):
    """The same batch with `extra` more padding columns on both sides."""

    def widen(t, value):
        return torch.cat([t, torch.full((t.shape[0], extra), value, dtype=t.dtype)], 1)

    return {
        "context_ids": widen(batch["context_ids"], enc_pad),
        "context_mask": widen(batch["context_mask"], 0),
        "input_ids": widen(batch["input_ids"], dec_pad),
        "attention_mask": widen(batch["attention_mask"], 0),
        "labels": widen(batch["labels"], IGNORE_INDEX),
    }


def test_building_a_condenser_warns_nothing(tiny_pair):
    # peft reading transformers' deprecated is_gradient_checkpointing printed a
    # FutureWarning on every train, eval and generate.
    cfg = ModelConfig(encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg)


def test_a_condenser_says_where_it_computes_as_a_transformers_model_does(tiny_pair):
    condenser, _, _ = _build(tiny_pair)
    assert condenser.device == condenser.decoder.device == torch.device("cpu")
    condenser.to("meta")
    assert condenser.device == condenser.decoder.device == torch.device("meta")


def test_padding_does_not_change_the_loss(tiny_pair):
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    samples = synthetic_samples(2, seed=5)
    short = samples[2]  # continuation: a prefix of the passage, and the rest of it
    long = samples[0]  # reconstruction: the whole passage, twice
    with torch.no_grad():
        alone, _ = condenser(_batch(enc_tok, dec_tok, [short]))
        padded, _ = condenser(
            _pad_more(
                _batch(enc_tok, dec_tok, [short]), 17, enc_tok.pad_token_id, dec_tok.pad_token_id
            )
        )
        pair = _batch(enc_tok, dec_tok, [short, long])
        pair_loss, _ = condenser(pair)
        pair_padded, _ = condenser(_pad_more(pair, 9, enc_tok.pad_token_id, dec_tok.pad_token_id))
    # The short sample really is padded, on both sides.
    assert pair["context_mask"][0].sum() < pair["context_mask"].shape[1]
    assert pair["attention_mask"][0].sum() < pair["attention_mask"].shape[1]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair_padded, pair_loss, rtol=0, atol=1e-5)


def test_a_sample_scores_the_same_alone_as_beside_a_much_longer_one(tiny_pair):
    """Dynamic padding on both sides: the short sample's context and text are padded by
    hundreds of positions, and its logits and loss must not move. Logits, not only the
    loss: the tiny random decoder's loss moves by 3e-4 from its condensed prefix to zeros,
    too little for a misplaced prefix to show in the loss alone."""
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    short = synthetic_samples(1, seed=9, facts=(1, 1))[1]  # a question: a few labels
    long = max(long_synthetic_samples(10, seed=9), key=lambda s: len(s.context + s.completion))
    items = tokenize([short, long], enc_tok, dec_tok, DatasetConfig(max_tokens=400))
    collate = Collator(enc_tok.pad_token_id, dec_tok.pad_token_id)
    pair = collate(items)
    assert len(items[1].context_ids) > 20 * len(items[0].context_ids)
    assert len(items[1].input_ids) > 5 * len(items[0].input_ids)
    pair["labels"][1] = IGNORE_INDEX  # what the pair scores is then the short sample alone
    with torch.no_grad():
        scores = {}
        for name, batch in (("alone", collate(items[:1])), ("beside", pair)):
            condensed = condenser.encode(batch["context_ids"], batch["context_mask"])
            text = (batch["input_ids"], batch["attention_mask"], batch["labels"])
            logits, targets = condenser.decoder_logits(condensed, *text)
            loss, count = condenser.decoder_loss(condensed, *text)
            scores[name] = (logits / logits.std(), targets, loss, count)
    alone, beside = scores["alone"], scores["beside"]
    assert alone[3] == beside[3] == sum(label != IGNORE_INDEX for label in items[0].labels)
    assert torch.equal(alone[1], beside[1])
    torch.testing.assert_close(beside[0], alone[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(beside[2], alone[2], rtol=0, atol=1e-5)


def _left_padded(rows: torch.Tensor, mask: torch.Tensor, value: int) -> torch.Tensor:
    """Right-padded `rows` moved to the right end of each row, `value` before them."""
    out = torch.full_like(rows, value)
    for i, n in enumerate(mask.sum(1).tolist()):
        out[i, rows.shape[1] - n :] = rows[i, :n]
    return out


def test_a_left_padded_context_condenses_as_the_right_padded_one(tiny_pair):
    """encode took every mask for right padding: behind left padding, a short row's last
    tokens were taken for condense slots and its pads attended to (56% relative error
    on the embedded model, found by review)."""
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    samples = synthetic_samples(2, seed=10)
    batch = _batch(enc_tok, dec_tok, [samples[5], samples[0]])  # a prefix, a passage
    ids, mask = batch["context_ids"], batch["context_mask"]
    assert mask[0].sum() < mask.shape[1]  # the first row is padded
    with torch.no_grad():
        right = condenser.encode(ids, mask)
        left = condenser.encode(
            _left_padded(ids, mask, enc_tok.pad_token_id), _left_padded(mask, mask, 0)
        )
    scale = right.std()
    torch.testing.assert_close(left / scale, right / scale, rtol=0, atol=1e-4)


def test_a_left_padded_text_scores_as_the_right_padded_one(tiny_pair):
    """decoder_logits takes any padding: a row behind left padding must be read at the
    positions it has alone (the tiny decoder is a GPT-2: absolute positions)."""
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    samples = synthetic_samples(2, seed=10)
    batch = _batch(enc_tok, dec_tok, [samples[1], samples[0]])  # a question, a passage
    mask = batch["attention_mask"]
    assert mask[0].sum() < mask.shape[1]
    left = [
        _left_padded(batch["input_ids"], mask, dec_tok.pad_token_id),
        _left_padded(mask, mask, 0),
        _left_padded(batch["labels"], mask, IGNORE_INDEX),
    ]
    with torch.no_grad():
        condensed = condenser.encode(batch["context_ids"], batch["context_mask"])
        right_logits, right_targets = condenser.decoder_logits(
            condensed, batch["input_ids"], mask, batch["labels"]
        )
        left_logits, left_targets = condenser.decoder_logits(condensed, *left)
    assert torch.equal(left_targets, right_targets)
    scale = right_logits.std()
    torch.testing.assert_close(left_logits / scale, right_logits / scale, rtol=0, atol=1e-4)


def test_condensed_context_does_not_depend_on_batch_neighbours(tiny_pair):
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    samples = synthetic_samples(2, seed=6)
    short, long = samples[2], samples[0]  # a passage's prefix, and the whole passage
    batch = _batch(enc_tok, dec_tok, [short, long])
    assert batch["context_mask"][0].sum() < batch["context_mask"].shape[1]  # short is padded
    with torch.no_grad():
        alone = condenser.encode(**_context(_batch(enc_tok, dec_tok, [short])))
        pair = condenser.encode(**_context(batch))
    torch.testing.assert_close(pair[0], alone[0], rtol=0, atol=1e-5)


def _context(batch):
    return {"context_ids": batch["context_ids"], "context_mask": batch["context_mask"]}


def test_loss_matches_full_logit_cross_entropy(tiny_pair):
    """Computing logits only at labelled positions gives the textbook loss."""
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    batch = _batch(enc_tok, dec_tok, synthetic_samples(2, seed=7)[:4])
    with torch.no_grad():
        loss, count = condenser(batch)
        condensed = condenser.encode(batch["context_ids"], batch["context_mask"])
        n = condensed.shape[1]
        embeds = torch.cat(
            [condensed, condenser.decoder.get_input_embeddings()(batch["input_ids"])], 1
        )
        mask = torch.cat(
            [torch.ones(len(condensed), n, dtype=torch.long), batch["attention_mask"]], 1
        )
        logits = condenser.decoder(inputs_embeds=embeds, attention_mask=mask).logits
        labels = torch.cat([torch.full((len(condensed), n), IGNORE_INDEX), batch["labels"]], 1)
        expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert count == (batch["labels"] != IGNORE_INDEX).sum()


def test_labels_cover_completion_only_unless_asked(tiny_pair):
    _, enc_tok, dec_tok = _build(tiny_pair)
    sample = synthetic_samples(1, seed=8)[1]
    prompt_len = len(dec_tok(sample.prompt)["input_ids"])
    completion_only = _batch(enc_tok, dec_tok, [sample])
    with_prompt = _batch(enc_tok, dec_tok, [sample], train_on_prompt=True)
    assert (completion_only["labels"][0, :prompt_len] == IGNORE_INDEX).all()
    assert (completion_only["labels"][0, prompt_len:] != IGNORE_INDEX).all()
    assert (with_prompt["labels"] == with_prompt["input_ids"]).all()
    # The completion ends with the decoder's EOS, so the decoder learns where to stop.
    assert completion_only["input_ids"][0, -1] == dec_tok.eos_token_id


def test_projection_maps_concatenated_layers_to_decoder_size(tiny_pair):
    condenser, enc_tok, dec_tok = _build(tiny_pair, n_last_hidden_states=2)
    batch = _batch(enc_tok, dec_tok, synthetic_samples(1, seed=9)[:2])
    assert condenser.projection.in_features == 2 * 32
    assert condenser.encode(batch["context_ids"], batch["context_mask"]).shape == (2, 4, 48)


@pytest.mark.parametrize("k", [1, 2])
def test_condensed_are_the_last_k_hidden_states_at_the_slots(tiny_pair, k):
    # The reference: transformers' own hidden_states[-k:] under an explicit padding mask.
    condenser, enc_tok, dec_tok = _build(tiny_pair, n_last_hidden_states=k)
    condenser.eval()
    batch = _batch(enc_tok, dec_tok, synthetic_samples(2, seed=4)[1:4])
    ids, mask = batch["context_ids"], batch["context_mask"]
    n, lengths = condenser.num_condense_tokens, mask.sum(1)
    embeds = condenser.encoder.get_input_embeddings()(ids)
    embeds = torch.cat([embeds, embeds.new_zeros(len(ids), n, embeds.shape[-1])], 1)
    rows = torch.arange(len(ids))[:, None]
    slots = lengths[:, None] + torch.arange(n)
    embeds[rows, slots] = condenser.condense_tokens
    full_mask = (torch.arange(ids.shape[1] + n)[None] < (lengths + n)[:, None]).long()
    with torch.no_grad():
        states = condenser.encoder_body(
            inputs_embeds=embeds, attention_mask=full_mask, output_hidden_states=True
        ).hidden_states
        expected = condenser.projection(condenser.norm(torch.cat(states[-k:], -1)[rows, slots]))
        got = condenser.encode(ids, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_more_hidden_states_than_encoder_layers_is_refused(tiny_pair):
    with pytest.raises(ConfigError, match="n_last_hidden_states=3, but the encoder has only 2"):
        _build(tiny_pair, n_last_hidden_states=3)


def test_only_condenser_parts_are_trainable(tiny_pair):
    condenser, _, _ = _build(tiny_pair)
    groups = condenser.parameter_groups()
    assert [p.shape for p in groups["condense"]] == [torch.Size([4, 32])]
    assert len(groups["projection"]) == 4  # norm weight+bias, projection weight+bias
    assert groups["lora"] and all(p.requires_grad for p in groups["lora"])
    assert not any(p.requires_grad for p in condenser.decoder.parameters())
    trainable = set(condenser.trainable_state_dict())
    assert not any(k.startswith("decoder.") for k in trainable)
    assert all("lora_" in k for k in trainable if k.startswith("encoder."))


def test_decoder_stays_in_eval_mode(tiny_pair):
    condenser, _, _ = _build(tiny_pair)
    condenser.train()
    assert condenser.encoder.training
    assert not any(m.training for m in condenser.decoder.modules())


def test_compiled_checkpointed_blocks_train_as_eager_ones(tiny_pair, tmp_path, reset_dynamo):
    """Compiled blocks with checkpointing, as a GPU job short of memory runs them, give the
    eager losses and gradients under bf16. Under transformers 5.17 (which checkpoints
    around a block's call, so backward recomputes it after encode returned) this raised a
    CheckpointError while peft's input casting was switched off only for the forward.
    Four encoder layers, so the hidden states kept for the projection (block 2's) come
    from a block that is neither the first nor the last."""
    from tests.conftest import _save_llama

    encoder = _save_llama(tmp_path / "encoder", load_tokenizer(tiny_pair[0]), 32, layers=4)
    condenser, enc_tok, dec_tok = _build((str(encoder), tiny_pair[1]), dtype=torch.bfloat16)
    batch = _batch(enc_tok, dec_tok, synthetic_samples(2, seed=10))
    condenser.train()
    condenser.enable_gradient_checkpointing()

    def step() -> dict[str, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = condenser(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in condenser.named_parameters() if p.requires_grad}
        condenser.zero_grad()
        return {"loss": loss.detach(), **grads}

    eager = step()
    condenser.compile_blocks()
    for _ in range(2):  # the first step compiles, the second runs the cached graphs
        torch.testing.assert_close(step(), eager, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("names", ["activation", "gradient"])
def test_gradient_checkpointing_keeps_gradients_and_dropout_off(tiny_pair, names, monkeypatch):
    """Under both of transformers' names for it: transformers 5.17 (a cloud GPU image's)
    has only gradient_checkpointing_enable, and training on a GPU crashed there."""
    from transformers import PreTrainedModel

    # transformers 5.17: the same methods under their old names (before 5.23, the only ones).
    if names == "gradient" and hasattr(PreTrainedModel, "activation_checkpointing_enable"):
        enable = PreTrainedModel.activation_checkpointing_enable
        active = PreTrainedModel.is_activation_checkpointing
        monkeypatch.setattr(
            PreTrainedModel,
            "gradient_checkpointing_enable",
            lambda self, gradient_checkpointing_kwargs=None: enable(
                self, activation_checkpointing_kwargs=gradient_checkpointing_kwargs
            ),
        )
        monkeypatch.setattr(PreTrainedModel, "is_gradient_checkpointing", active)
        monkeypatch.delattr(PreTrainedModel, "activation_checkpointing_enable")
        monkeypatch.delattr(PreTrainedModel, "is_activation_checkpointing")
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    batch = _batch(enc_tok, dec_tok, synthetic_samples(1, seed=10))
    condenser.train()
    torch.manual_seed(1)
    loss, _ = condenser(batch)
    loss.backward()
    plain = condenser.condense_tokens.grad.clone()
    condenser.zero_grad()
    condenser.enable_gradient_checkpointing()
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in condenser.decoder.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(
        m.gradient_checkpointing and m.training for m in layers
    )  # it will recompute
    assert not condenser.decoder.get_input_embeddings().weight.requires_grad
    dropouts = [m for m in condenser.decoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)
    torch.manual_seed(1)
    loss_ckpt, _ = condenser(batch)
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss)
    torch.testing.assert_close(condenser.condense_tokens.grad, plain, rtol=1e-4, atol=1e-6)


def _dropping_decoder(kind: str, vocab: int, tok):
    """A tiny decoder whose layers apply dropout by their own `training` flag."""
    from transformers import DbrxConfig, DbrxForCausalLM, OPTConfig, OPTForCausalLM

    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}  # fmt: skip
    if kind == "opt":  # layer-level `self.dropout`
        return OPTForCausalLM(OPTConfig(
            vocab_size=vocab, hidden_size=48, ffn_dim=96, num_hidden_layers=2,
            num_attention_heads=4, word_embed_proj_dim=48, max_position_embeddings=512,
            dropout=0.1, **ids))  # fmt: skip
    return DbrxForCausalLM(DbrxConfig(  # `self.resid_pdrop`, not named *dropout*
        vocab_size=vocab, d_model=48, n_layers=2, n_heads=4, max_seq_len=512, resid_pdrop=0.1,
        attn_config={"kv_n_heads": 4, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 96, "moe_num_experts": 2, "moe_top_k": 1}, **ids))  # fmt: skip


@pytest.mark.parametrize("kind", ["opt", "dbrx"])
def test_a_frozen_decoder_whose_layers_drop_out_themselves_stays_deterministic(
    tiny_pair, tmp_path, kind
):
    # Their layers apply dropout by their own `training` flag, which checkpointing raises.
    encoder, decoder_dir = tiny_pair
    dec_tok = load_tokenizer(decoder_dir)
    torch.manual_seed(0)
    _dropping_decoder(kind, len(dec_tok), dec_tok).save_pretrained(tmp_path / kind)
    dec_tok.save_pretrained(tmp_path / kind)
    condenser, enc_tok, dec_tok = _build((encoder, str(tmp_path / kind)))
    batch = _batch(enc_tok, dec_tok, synthetic_samples(2, seed=10))
    condenser.eval()
    with torch.no_grad():
        reference = condenser(batch)[0]
        condenser.enable_gradient_checkpointing()
        condenser.train()
        for _ in range(3):
            torch.testing.assert_close(condenser(batch)[0], reference)


def test_loss_applies_the_decoders_own_logit_scaling(tiny_pair):
    """Cohere multiplies its logits by logit_scale; the loss must be the model's own."""
    from transformers import CohereConfig, CohereForCausalLM

    encoder, decoder_dir = tiny_pair
    dec_tok = load_tokenizer(decoder_dir)
    torch.manual_seed(0)
    cohere = CohereForCausalLM(
        CohereConfig(
            vocab_size=len(dec_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            logit_scale=0.25,
            pad_token_id=dec_tok.pad_token_id,
        )
    )
    cfg = ModelConfig(
        encoder=encoder, decoder=decoder_dir, num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(encoder), cohere, cfg).eval()
    batch = _batch(load_tokenizer(encoder), dec_tok, synthetic_samples(1, seed=11))
    with torch.no_grad():
        loss, _ = condenser(batch)
        condensed = condenser.encode(batch["context_ids"], batch["context_mask"])
        embeds = torch.cat([condensed, cohere.get_input_embeddings()(batch["input_ids"])], 1)
        mask = torch.cat(
            [torch.ones(len(condensed), 4, dtype=torch.long), batch["attention_mask"]], 1
        )
        labels = torch.cat([torch.full((len(condensed), 4), IGNORE_INDEX), batch["labels"]], 1)
        expected = cohere(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_no_context_loss_is_the_decoders_own_loss_on_the_text(tiny_pair):
    """N = 0 condensed embeddings (the no-context baseline) scores the text alone."""
    condenser, enc_tok, dec_tok = _build(tiny_pair)
    condenser.eval()
    batch = _batch(enc_tok, dec_tok, synthetic_samples(1, seed=12))
    with torch.no_grad():
        empty = torch.zeros(len(batch["input_ids"]), 0, 48)
        loss, count = condenser.decoder_loss(
            empty, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        expected = condenser.decoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert count == (batch["labels"] != IGNORE_INDEX).sum()  # the prompt comes first: nothing lost


def test_the_condensed_side_starts_on_the_scale_of_a_gemma_models_embeddings():
    """Gemma's embedding multiplies its weights by sqrt(hidden size) (5.7 at 32): condense
    tokens and projection were initialised from the weights alone, 5.7x too small."""
    from transformers import GemmaForCausalLM

    from tests.test_architectures import CONFIGS, VOCAB

    torch.manual_seed(0)
    encoder, decoder = GemmaForCausalLM(CONFIGS["gemma"]()), GemmaForCausalLM(CONFIGS["gemma"]())
    cfg = ModelConfig(encoder="e", decoder="d", num_condense_tokens=64, lora_r=4, lora_alpha=8)
    condenser = Condenser(encoder, decoder, cfg)
    fed = decoder.get_input_embeddings()(torch.arange(VOCAB)).std().item()
    assert fed > 5 * decoder.get_input_embeddings().weight.std().item()
    assert condenser.condense_tokens.std().item() == pytest.approx(fed, rel=0.1)
    fan_in = condenser.projection.in_features
    assert condenser.projection.weight.std().item() * fan_in**0.5 == pytest.approx(fed, rel=0.1)
