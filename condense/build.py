"""The models and data of a job, from its config: what `condense train` and `condense bench`
fit or time. Each base model loads at the Hub commit given (a resume's), else its newest."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from condense.config import ConfigError, TrainConfig
from condense.data import CondenseDataModule
from condense.device import on_gpu, precision_dtype
from condense.model import Condenser
from condense.module import CondenseModule
from condense.weights import (
    check_attends_back_only,
    check_causal_lm,
    load_causal_lm,
    load_tokenizer,
    max_positions,
    model_config,
)


def build(
    cfg: TrainConfig, precision: str, commits: dict[str, str | None] | None = None
) -> tuple[CondenseModule, CondenseDataModule]:
    """The LightningModule and a set-up DataModule for a config: tokenizers, then the data
    (cheap, and the likelier to be wrong), then the weights; of the base models' Hub
    `commits` where given (trained_commits), else of their newest."""
    commits = commits or {}
    check_models(cfg, commits)
    encoder_tok = load_tokenizer(cfg.model.encoder, commits.get("encoder"))
    decoder_tok = load_tokenizer(cfg.model.decoder, commits.get("decoder"))
    if decoder_tok.eos_token_id is None:
        rank_zero_warn(
            f"condense: the decoder {cfg.model.decoder!r} has no eos token: completions train"
            " without an end, and generation runs to its max_new_tokens"
        )
    datamodule = CondenseDataModule(
        cfg.data, cfg.dataset, encoder_tok, decoder_tok, cfg.seed, cfg.val_batches
    )
    datamodule.setup()
    # Frozen weights are stored in the compute dtype; only trainable ones stay fp32.
    dtype = precision_dtype(precision)
    encoder = load_causal_lm(cfg.model.encoder, dtype, commits.get("encoder"))
    decoder = load_causal_lm(cfg.model.decoder, dtype, commits.get("decoder"))
    module = condense_module(cfg, encoder, decoder, precision)
    condenser = module.condenser
    # As Condenser.from_pretrained attaches them: condense(texts) and generate() need them.
    condenser.encoder_tokenizer, condenser.decoder_tokenizer = encoder_tok, decoder_tok
    condenser.max_context_tokens = cfg.dataset.max_tokens
    condenser.max_context_characters = cfg.dataset.max_characters
    return module, datamodule


def condense_module(
    cfg: TrainConfig, encoder: torch.nn.Module, decoder: torch.nn.Module, precision: str
) -> CondenseModule:
    """The LightningModule of a condenser over these two models, as `cfg` sets it up:
    LoRA, gradient checkpointing, compiled blocks, the optimizer's settings."""
    # Seeded here, not only at start: loading (a first-time GGUF conversion, say) may
    # draw random numbers, and the condenser's initialisation must not depend on that.
    L.seed_everything(cfg.seed, verbose=False)
    # Only the decoder must be causal: the encoder's hidden states are all that is read.
    check_attends_back_only(decoder, cfg.model.decoder)
    condenser = Condenser(encoder, decoder, cfg.model)
    checkpointing = _use_checkpointing(cfg, condenser, precision)
    if checkpointing:
        condenser.enable_gradient_checkpointing()
    if cfg.model.compile:
        condenser.compile_blocks()
        # The first batches are silent while they compile: say so, or the run looks hung.
        rank_zero_info(
            "condense: model.compile: the first validation and training batches compile"
            " the transformer blocks (the bench job's first step: 110 s on a 2-core CPU,"
            " 45 s with torch's compile cache warm)"
        )
    scaled = precision == "16-mixed"  # Lightning's GradScaler; 16-true runs without one
    return CondenseModule(condenser, cfg.optim, cfg.max_steps, scaled)


def check_models(cfg: TrainConfig, commits: dict[str, str | None] | None = None) -> None:
    """From the models' configs (at the Hub `commits` they load, where given), before any
    weights: both are causal LMs (check_causal_lm), and have the positions the job needs.
    The encoder reads context + N condense slots and the decoder N slots + prompt and
    completion, each up to max_tokens + N positions."""
    need = cfg.dataset.max_tokens + cfg.model.num_condense_tokens
    for role, name in (("encoder", cfg.model.encoder), ("decoder", cfg.model.decoder)):
        revision = (commits or {}).get(role)
        config = model_config(name, revision)
        check_causal_lm(config, name, role)
        limit = max_positions(config)
        if limit is not None and need > limit:
            raise ConfigError(
                f"dataset.max_tokens + model.num_condense_tokens = {need} positions, more than"
                f" the {role} {name!r} has ({limit})"
            )


def _use_checkpointing(cfg: TrainConfig, condenser: Condenser, precision: str) -> bool:
    """model.gradient_checkpointing, or where it is null: on a GPU whose memory the job's
    largest batch would not fit in without it (condense plan's estimate), off elsewhere.
    Recomputing costs a third more compute: the default job on an H200 ran twice as fast
    without it."""
    setting = cfg.model.gradient_checkpointing
    if setting is not None:
        return setting
    if not on_gpu(cfg.accelerator):
        return False
    from condense.plan import checkpointing_decision

    # Every GPU the run may use: the device is not chosen yet (Lightning picks it later).
    have = min(
        torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())
    )
    checkpointing, need = checkpointing_decision(condenser, cfg, precision, have)
    rank_zero_info(
        f"condense: gradient checkpointing {'on' if checkpointing else 'off'}: a batch of"
        f" {cfg.dataset.batch_size} x {cfg.dataset.max_tokens} tokens on each side needs"
        f" ~{need / 2**30:.1f} GiB without it, of this GPU's {have / 2**30:.0f} GiB"
        " (--model.gradient_checkpointing true/false decides)"
    )
    return checkpointing
