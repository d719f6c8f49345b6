"""The condenser: a LoRA encoder, N condense embeddings, LayerNorm and a projection,
feeding a frozen decoder.

Shapes: B batch, L context tokens, N condense slots, T prompt+completion tokens,
He / Hd encoder / decoder hidden sizes, k = n_last_hidden_states.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from condense.config import ConfigError, ModelConfig, first_line
from condense.flops import blocks
from condense.loss import labelled_cross_entropy
from condense.weights import max_positions

IGNORE_INDEX = -100


class Condenser(nn.Module):
    """Condenses a context into N embeddings in the decoder's input space, and scores
    the decoder's completion of a prompt from them.

    Args:
        encoder: A Hugging Face causal LM; LoRA is added to it here.
        decoder: A Hugging Face causal LM; frozen here (no grads, eval mode).
        cfg: The condenser's shape and LoRA settings.

    >>> condenser = Condenser.from_pretrained("runs/test-.../artifact")
    >>> condensed = condenser.condense(["A long context ..."])  # (1, N, Hd)
    >>> condensed = condenser.encode(context_ids, context_mask)  # the same, from token ids
    """

    # How training cut its contexts, which condense(texts) cuts the same way; set by
    # from_pretrained and by training (None: no cut).
    max_context_characters: int | None = None
    max_context_tokens: int | None = None
    # What an artifact it was loaded from says of the run that trained it (data, seed,
    # split, steps, losses): save_pretrained writes it again, as it stands, whatever was
    # done to the weights since (set it to None to save without it).
    training_record: dict | None = None

    def __init__(self, encoder: nn.Module, decoder: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.num_condense_tokens = cfg.num_condense_tokens
        self.n_last = cfg.n_last_hidden_states
        encoder_hidden = encoder.config.hidden_size
        decoder_hidden = decoder.config.hidden_size

        # A rank above the encoder's width adds nothing that width does not have; a huge one
        # ran out of memory (1e8) or overflowed inside torch (1e30) in a long traceback.
        if cfg.lora_r > encoder_hidden:
            raise ConfigError(
                f"model.lora_r={cfg.lora_r} is above the encoder's hidden size"
                f" ({encoder_hidden}): give a rank at most that"
            )
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
        )
        try:
            with warnings.catch_warnings():
                # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing: a
                # FutureWarning on every load that the user can do nothing about.
                warnings.filterwarnings(
                    "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
                )
                self.encoder = get_peft_model(encoder, lora)
        except ValueError as err:  # peft's NoMatchingPeftModuleError, among others
            raise ConfigError(
                f"model.lora_target_modules={cfg.lora_target_modules}: {first_line(err)}"
            ) from None
        self._lora_layers = tuple(
            m for m in self.encoder.modules() if isinstance(m, BaseTunerLayer)
        )
        # The transformer bodies, without LM heads: the encoder's head is never needed,
        # and the decoder's head is applied only at labelled positions.
        self.encoder_body = encoder.base_model
        self.encoder_blocks = tuple(blocks(encoder))  # a tuple: not registered again
        if self.n_last > len(self.encoder_blocks):
            raise ConfigError(
                f"model.n_last_hidden_states={self.n_last}, but the encoder has only"
                f" {len(self.encoder_blocks)} layers"
            )
        self.decoder = decoder.requires_grad_(False).eval()
        _zero_dropout(self.decoder)
        self.decoder_body = decoder.base_model

        # Start on the scale of real embeddings on both sides, so that step 0 already
        # feeds each model inputs of the size it was trained on.
        encoder_scale = _embedding_scale(encoder)
        decoder_scale = _embedding_scale(decoder)
        self.condense_tokens = nn.Parameter(
            torch.randn(cfg.num_condense_tokens, encoder_hidden) * encoder_scale
        )
        self.norm = nn.LayerNorm(self.n_last * encoder_hidden)
        self.projection = nn.Linear(self.n_last * encoder_hidden, decoder_hidden)
        # LayerNorm outputs have unit variance, so weights of std s give outputs of std
        # s * sqrt(fan_in): choose s to land on the decoder's embedding scale.
        nn.init.normal_(
            self.projection.weight, std=decoder_scale / (self.n_last * encoder_hidden) ** 0.5
        )
        nn.init.zeros_(self.projection.bias)

    def train(self, mode: bool = True) -> Condenser:
        """Switch training mode, keeping the frozen decoder in eval mode (no dropout).

        Hugging Face layers only checkpoint activations while `training` is set, so with
        gradient checkpointing that one flag is raised on the decoder's layers alone; every
        module that could apply dropout stays in eval mode.
        """
        super().train(mode)
        self.decoder.eval()
        if mode and is_checkpointing(self.decoder):
            for layer in _checkpointed_layers(self.decoder):
                layer.training = True
        return self

    def encode(self, context_ids: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """Condensed embeddings (B, N, Hd) of contexts (B, L), padded on either side.

        The N condense embeddings go right after each context's last real token, so
        positions 0..len+N-1 are contiguous whatever the padding, and the causal mask
        keeps every real position from seeing the padding that follows it.
        """
        if _unless_right_padded(context_mask) is not None:
            # A left-padding tokenizer's batch: its rows' last tokens would be taken for
            # slots, and their pads attended to. Each row's tokens move to its front.
            context_ids, context_mask = _right_aligned(context_ids, context_mask)
        with self.autocast():
            return self._encode(context_ids, context_mask)

    def _encode(self, context_ids: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        batch = context_ids.shape[0]
        n = self.num_condense_tokens
        lengths = context_mask.sum(1)  # (B,)
        embeds = token_embeddings(self.encoder, context_ids)  # (B, L, He)
        embeds = torch.cat(
            [embeds, embeds.new_zeros(batch, n, embeds.shape[-1])], 1
        )  # (B, L+N, He)
        rows = torch.arange(batch, device=embeds.device)[:, None].expand(batch, n)  # (B, N)
        slots = lengths[:, None] + torch.arange(n, device=embeds.device)  # (B, N)
        tokens = self.condense_tokens.to(embeds.dtype).expand(batch, n, -1)  # (B, N, He)
        embeds = embeds.index_put((rows, slots), tokens)
        self._cast_lora_inputs(not torch.is_autocast_enabled(embeds.device.type))
        # The outputs of blocks L-k..L-2 (0-based) and the final normed one are what
        # output_hidden_states=True gives as hidden_states[-k:], without the hooks it installs
        # in every block, which torch.compile cannot trace.
        count = len(self.encoder_blocks)
        inner = self.encoder_blocks[count - self.n_last : count - 1]
        with _outputs_of(inner) as kept:
            # Right padding by construction: the causal mask alone keeps every real position
            # from the pads after it, and lets SDPA take its faster causal kernel.
            last = self.encoder_body(
                inputs_embeds=embeds, attention_mask=None, use_cache=False
            ).last_hidden_state
        hidden = torch.cat([*kept, last], dim=-1)  # (B, L+N, k*He)
        hidden = hidden[rows, slots]  # (B, N, k*He)
        return self.projection(self.norm(hidden))  # (B, N, Hd)

    def _cast_lora_inputs(self, enabled: bool) -> None:
        """Turn on or off peft's cast of each LoRA input to the LoRA weights' dtype.

        Under autocast it would cast the bf16 input to fp32 and autocast back to bf16: two
        copies per adapter, each kept for backward, for the same numbers. Without autocast
        the dtypes must match, so it casts. The setting is left in place after forward, not
        restored: transformers 5.17 checkpoints around a block's call, so backward
        recomputes the blocks after encode has returned, and a recomputation that cast
        where the forward did not saved other tensors in compiled blocks (a
        CheckpointError at the first bf16 backward, on an H200 and on CPU alike)."""
        for layer in self._lora_layers:
            layer.cast_input_dtype_enabled = enabled

    def decoder_logits(
        self,
        condensed: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's logits (M, V) at the M positions that predict a label, and those
        labels (M,). It reads [condensed (N) ; prompt+completion (T)]; N may be 0."""
        hidden, targets = self._labelled_hidden(condensed, input_ids, attention_mask, labels)
        return self._logits(hidden), targets

    def decoder_loss(
        self,
        condensed: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy of the decoder on labelled tokens, and how many there were.
        Logits are computed only where there is a label, not over every position, and a
        chunk of rows at a time (condense.loss)."""
        hidden, targets = self._labelled_hidden(condensed, input_ids, attention_mask, labels)
        vocab = self.decoder.get_output_embeddings().out_features
        loss = labelled_cross_entropy(hidden, targets, self._logits, vocab)
        return loss, targets.new_tensor(len(targets))

    def _labelled_hidden(
        self,
        condensed: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's last hidden states (M, Hd) at the positions that predict a label,
        and those labels (M,)."""
        n = condensed.shape[1]
        token_embeds = token_embeddings(self.decoder, input_ids)  # (B, T, Hd)
        embeds = torch.cat([condensed.to(token_embeds.dtype), token_embeds], 1)  # (B, N+T, Hd)
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], n), attention_mask], 1)
        hidden = self.decoder_body(
            inputs_embeds=embeds, use_cache=False, **_mask_and_positions(mask)
        ).last_hidden_state  # (B, N+T, Hd)
        # Position p predicts the token at p+1.
        targets = torch.cat([labels.new_full((len(labels), n), IGNORE_INDEX), labels], 1)[:, 1:]
        targeted = targets != IGNORE_INDEX  # (B, N+T-1)
        return hidden[:, :-1][targeted], targets[targeted]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder's fp32 logits at these last hidden states, as its own forward gives.
        The head's weights are applied directly, not through its module: the chunked loss
        takes gradients inside forward, where module backward hooks (FlopCounterMode's,
        a profiler's) must not fire."""
        head = self.decoder.get_output_embeddings()
        logits = F.linear(hidden, head.weight, head.bias)
        return _as_model_logits(logits.float(), self.decoder.config)

    @torch.no_grad()
    def condense(self, texts: list[str]) -> torch.Tensor:
        """Condensed embeddings (B, N, Hd) of raw texts, with the encoder's tokenizer.

        Needs the tokenizers that `from_pretrained` attaches; contexts are cut as training
        cut them: to its `max_characters`, then to its `max_tokens`.
        """
        if isinstance(texts, str):
            # A str is a sequence too: each of its characters would be condensed as a text.
            raise TypeError("condense(texts) takes a list of texts: condense([text])")
        texts = list(texts)  # any iterable, read once
        if not all(isinstance(text, str) for text in texts):
            kinds = sorted({type(text).__name__ for text in texts if not isinstance(text, str)})
            raise TypeError(f"condense(texts) takes texts (str), not {', '.join(kinds)}")
        if not texts:
            hidden = self.projection.out_features
            return self.condense_tokens.new_zeros(0, self.num_condense_tokens, hidden)
        tokenizer = getattr(self, "encoder_tokenizer", None)
        if tokenizer is None:
            raise RuntimeError(
                "condense(texts) needs a tokenizer: load with Condenser.from_pretrained"
            )
        texts = [text[: self.max_context_characters] for text in texts]
        limit = self.max_context_tokens
        batch = tokenizer(
            texts, padding=True, truncation=limit is not None, max_length=limit, return_tensors="pt"
        )
        device = self.device
        return self.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    @property
    def device(self) -> torch.device:
        """Where the condenser computes (its trained tensors' device), as a Hugging Face
        model's `.device` says it."""
        return self.condense_tokens.device

    @property
    def decoder_positions(self) -> int | None:
        """How many positions the decoder reads (weights.max_positions); None when its
        config does not say. Generation and eval's full context stop there."""
        return max_positions(self.decoder.config)

    def autocast(self) -> AbstractContextManager:
        """Autocast to the frozen models' dtype where they are stored below fp32, as mixed
        precision training ran them (the trained tensors stay fp32); nothing where they are
        fp32 or wider (64-true) or an autocast is on already."""
        weight = self.decoder.get_input_embeddings().weight
        if weight.dtype.itemsize >= 4 or torch.is_autocast_enabled(weight.device.type):
            return nullcontext()
        return torch.autocast(weight.device.type, dtype=weight.dtype)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Condenser:
        """Load a condenser from an artifact folder or a Hub repo (see condense.artifact),
        its frozen models in `dtype` (trained tensors stay fp32), on `device`."""
        from condense.artifact import load_condenser

        return load_condenser(path_or_hub_id, dtype, device)

    def save_pretrained(self, folder: str, **extra) -> None:
        """Write the portable artifact: LoRA adapter, condenser tensors, config, model card.
        How training cut contexts (max_context_tokens, max_context_characters) is kept, so
        that the condenser loaded back condenses as this one does, and so is the record of
        the run that trained it, where it was loaded from an artifact (`condense eval`
        rebuilds the validation split from it); `extra` adds to the config (or overrides)."""
        from pathlib import Path

        from condense.artifact import save_artifact

        cut = {"max_tokens": self.max_context_tokens, "max_characters": self.max_context_characters}
        kept = {key: value for key, value in cut.items() if value is not None}
        save_artifact(self, Path(folder), {**(self.training_record or {}), **kept, **extra})

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and target-token count of a collated batch."""
        condensed = self.encode(batch["context_ids"], batch["context_mask"])
        return self.decoder_loss(
            condensed, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations of both models in backward (non-reentrant, so gradients
        reach the condense embeddings through a frozen decoder)."""
        for model in (self.encoder.base_model.model, self.decoder):
            _checkpointing_enable(model, {"use_reentrant": False})
        # Enabling it also makes the decoder's token embeddings require grad (a hook meant
        # for reentrant checkpointing); that gradient is never used, so turn it off.
        self.decoder.disable_input_require_grads()
        self.train(self.training)

    def compile_blocks(self) -> None:
        """torch.compile every transformer block of both models, in place, so state dict
        keys do not change. The blocks run one forward, so they share compiled graphs; the
        shapes are dynamic from the start, as every batch has its own lengths."""
        for model in (self.encoder, self.decoder):
            for block in blocks(model):
                block.compile(dynamic=True)

    def base_models(self) -> dict[str, dict[str, str | None]]:
        """Each base model's name as configured and the Hub commit it was loaded at
        (weights.load_causal_lm notes it; None for a folder, or a model built otherwise):
        what an artifact or a checkpoint records, so that its reader loads the same."""
        models = {"encoder": self.encoder.get_base_model(), "decoder": self.decoder}
        return {
            role: {"name": getattr(self.cfg, role), "commit": getattr(model, "hub_commit", None)}
            for role, model in models.items()
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: condense embeddings, norm, projection, LoRA."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by optimizer group: condense, projection (with norm), lora."""
        groups: dict[str, list[nn.Parameter]] = {"condense": [], "projection": [], "lora": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name == "condense_tokens":
                groups["condense"].append(p)
            elif name.startswith(("norm.", "projection.")):
                groups["projection"].append(p)
            else:
                groups["lora"].append(p)
        return groups


@contextmanager
def _outputs_of(modules: Iterable[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """A list that collects each module's output (the first, if a tuple) in call order."""
    kept: list[torch.Tensor] = []

    def keep(module, args, output):
        kept.append(output[0] if isinstance(output, tuple) else output)

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


def _unless_right_padded(mask: torch.Tensor) -> torch.Tensor | None:
    """None where every row's padding comes after all its tokens: then the causal mask
    already keeps real positions from the pads, and SDPA takes its faster causal kernel
    (3-7% of the bench job's CPU step). Other masks are passed on as they are."""
    return None if bool((mask[:, 1:] <= mask[:, :-1]).all()) else mask


def _right_aligned(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids` and `mask` with each row's real tokens first, in their order, pads after."""
    order = torch.sort(mask, dim=1, descending=True, stable=True).indices
    return ids.gather(1, order), mask.gather(1, order)


def _mask_and_positions(mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """The attention arguments for a (B, S) mask: none where it is right-padded. Any other
    padding gets its mask and positions counted over real tokens only, as each row would
    have alone: models with absolute positions (GPT-2, OPT) would otherwise read a row
    behind left padding at shifted positions."""
    if _unless_right_padded(mask) is None:
        return {"attention_mask": None}
    return {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


def _as_model_logits(logits: torch.Tensor, config) -> torch.Tensor:
    """What the decoder's own forward does to its LM head's output, for the families that
    do anything: Cohere scales, Granite divides, Gemma 2/3 soft-cap."""
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "final_logit_softcapping", None):
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_embeddings(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The input embeddings `model`'s own forward makes of token `ids`, to pass it as
    inputs_embeds. Falcon-H1 multiplies its embeddings by embedding_multiplier only when
    given input_ids: without it here, its layers would read tokens at another scale than
    it was trained on."""
    embeds = model.get_input_embeddings()(ids)
    multiplier = _ids_only_multiplier(model.config)
    return embeds if multiplier == 1.0 else embeds * multiplier


def _ids_only_multiplier(config) -> float:
    """The factor `config`'s model applies to input_ids' embeddings but not to
    inputs_embeds (1.0 for every family but Falcon-H1)."""
    if config.model_type == "falcon_h1":
        return float(config.embedding_multiplier)
    return 1.0


def _embedding_scale(model: nn.Module) -> float:
    """The spread of the token embeddings `model` feeds its first layer: its embedding
    weights', times the scale some families' embeddings multiply by (Gemma's and XGLM's
    sqrt(hidden size): 8x the weights' spread at hidden size 64, 45x at Gemma-2B's;
    Falcon-H1's embedding_multiplier)."""
    embedding = model.get_input_embeddings()
    if embedding.weight.is_meta:  # shapes only (parameter counts, plans): never used
        return 0.02
    scale = float(getattr(embedding, "embed_scale", 1.0)) * _ids_only_multiplier(model.config)
    return embedding.weight.float().std().item() * scale


def _zero_dropout(model: nn.Module) -> None:
    """Set to 0 every dropout rate `model`'s modules and config keep as a plain float (named
    *dropout* or *pdrop*). Some Hugging Face layers (OPT, XGLM, BioGPT, DBRX) apply dropout
    by their own `training` flag, and some read the rate from the config at each call;
    gradient checkpointing needs that flag raised on the frozen decoder's layers
    (Condenser.train), and a frozen model must compute as in eval mode."""

    def is_rate(name: str, value: object) -> bool:
        return ("dropout" in name or "pdrop" in name) and isinstance(value, float)

    for holder in (*model.modules(), getattr(model, "config", None)):
        if holder is None:
            continue
        for name in [k for k, v in vars(holder).items() if is_rate(k, v)]:
            setattr(holder, name, 0.0)


def is_checkpointing(model: nn.Module) -> bool:
    """Whether a Hugging Face model's activation checkpointing is on (either name)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _checkpointing_enable(model: nn.Module, kwargs: dict) -> None:
    """Turn on a Hugging Face model's activation checkpointing: `activation_checkpointing_enable`
    where transformers has it, else its older name (transformers 5.17 has only that)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
