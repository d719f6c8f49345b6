"""`condense plan`: what a job needs on GPUs, from the models' configs alone.

The condenser is built on the meta device (shapes, no weights, no download), so parameter
counts are exact. Memory and time are estimates whose assumptions are named in the output:

- weights: frozen weights in bf16 (2 bytes), trainable ones fp32 (4 bytes); gradients of the
  trainable ones fp32 (4), AdamW's two moments fp32 (8); other precisions (bench passes the
  job's) change those widths as Lightning stores them;
- activations: what autograd keeps per token of each transformer block under bf16 autocast
  (see `block_activation_bytes`), plus the logits at labelled positions; with gradient
  checkpointing, each block's input plus one block's activations being recomputed;
- time: model FLOPs (condense.flops) at a stated MFU of the GPU's dense bf16 peak; data
  parallel over GPUs, each with the job's batch (the all-reduce is not counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from condense import flops
from condense.config import ConfigError, TrainConfig
from condense.device import PRECISION_ALIASES, precision_dtype
from condense.loss import CHUNK_LOGITS


@dataclass(frozen=True)
class Gpu:
    """A GPU model: its memory as sold (GB) and as CUDA reports it to torch (GiB, what
    train weighs batches against), and its dense bf16 tensor peak (the vendor's figure,
    no sparsity)."""

    memory_gb: int
    memory_gib: float
    peak_tflops: float


# memory_gib: torch.cuda's total_memory as out-of-memory errors print it ("a total
# capacity of ..."): 80 GB reads as ~79.1 GiB, not 80, and a 48 GB L40S as 44.4. Taking
# the sold figure for GiB let plan call a batch of 40-43 GiB fit on an L40S where training
# turned checkpointing on. H200's is the 139 GiB its cloud machines state.
GPUS = {
    "H100": Gpu(80, 79.1, 989),  # SXM
    "H100-PCIE": Gpu(80, 79.1, 756),
    "H200": Gpu(141, 139.0, 989),
    "A100-80GB": Gpu(80, 79.2, 312),
    "A100": Gpu(40, 39.5, 312),
    "L40S": Gpu(48, 44.4, 362),
    "A10G": Gpu(24, 22.2, 70),
}
GPU_COUNTS = (1, 8, 16)
USABLE = 0.9  # of a GPU's memory: the CUDA context, the allocator's fragmentation
BF16, FP32 = 2, 4


def meta_condenser(cfg: TrainConfig):
    """The job's condenser on the meta device: exact shapes, no memory."""
    from condense.model import Condenser
    from condense.weights import causal_lm_from_config

    encoder = causal_lm_from_config(cfg.model.encoder)
    decoder = causal_lm_from_config(cfg.model.decoder)
    with torch.device("meta"):
        return Condenser(encoder, decoder, cfg.model)


def block_activation_bytes(config, lora_r: int = 0, adapters: int = 0, compute: int = BF16) -> int:
    """Bytes autograd keeps per token of one Llama-style block under bf16 autocast, as
    counted with torch.autograd.graph.saved_tensors_hooks on transformers 5 with SDPA;
    `compute` is the bytes of the dtype the block computes in (2 for bf16).

    Two RMSNorms each keep their fp32 input (4H); SDPA keeps q, k, v (k and v repeated to
    every head) and its output; the gated MLP keeps gate, up and silu(gate); batches are
    right-padded, so no padding mask is kept. Frozen projections keep nothing of their
    input, but a LoRA adapter keeps it (the two norms' outputs, the attention output, the
    MLP product) and its rank-r middle.
    On CPU inside torch.compile, condense.attention's blocks also keep their bf16
    probabilities (10/16 of heads x length^2 per row and layer), which is not counted.
    """
    hidden = config.hidden_size
    heads = config.num_attention_heads
    width = heads * (getattr(config, "head_dim", None) or hidden // heads)
    inner = getattr(config, "intermediate_size", None) or 4 * hidden
    kept = 2 * max(FP32, compute) * hidden + 4 * compute * width + 3 * compute * inner
    if adapters:
        kept += compute * (2 * hidden + width + inner) + compute * lora_r * adapters
    return kept


def memory(
    condenser,
    batch: int,
    context: int,
    text: int,
    labelled: int,
    checkpointing: bool,
    precision: str = "bf16-mixed",
) -> dict[str, int]:
    """Bytes per GPU (or CPU process) for one training step, by part.

    Args:
        condenser: The job's condenser (meta device is enough).
        batch: Rows per step.
        context: Context tokens per row (padded width).
        text: Prompt + completion tokens per row (padded width).
        labelled: Labelled positions in the whole batch (the logits computed).
        checkpointing: Gradient checkpointing on both models.
        precision: Lightning's precision: frozen weights and activations in its dtype;
            trainable weights, their gradients and AdamW's moments fp32 under "-mixed"
            (plus autocast's copy of the weights), in its dtype under "-true".
    """
    compute = precision_dtype(precision).itemsize
    mixed = precision.endswith("-mixed")
    stored = FP32 if mixed else compute  # trainable weights, gradients, AdamW moments
    wide = max(FP32, compute)  # what autocast computes in fp32
    n = condenser.num_condense_tokens
    params = list(condenser.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    lora_r = condenser.cfg.lora_r
    adapters = _adapters_per_block(condenser.encoder)
    enc, dec = condenser.encoder.config, condenser.decoder.config
    enc_tokens, dec_tokens = batch * (context + n), batch * (text + n)
    enc_block = block_activation_bytes(enc, lora_r, adapters, compute)
    dec_block = block_activation_bytes(dec, compute=compute)
    layers_e, layers_d = len(flops.blocks(condenser.encoder)), len(flops.blocks(condenser.decoder))
    if checkpointing:  # each block's input kept, one block's activations alive at a time
        blocks = compute * (
            enc.hidden_size * layers_e * enc_tokens + dec.hidden_size * layers_d * dec_tokens
        )
        blocks += max(enc_block * enc_tokens, dec_block * dec_tokens)
    else:
        blocks = enc_block * layers_e * enc_tokens + dec_block * layers_d * dec_tokens
    # The logits live one chunk of rows at a time (condense.loss): bf16 from the head,
    # their fp32 copy, log-softmax, its fp32 gradient; the hidden states' gradient is kept.
    rows = min(labelled, max(1, CHUNK_LOGITS // dec.vocab_size))
    logits = (compute + 3 * wide) * rows * dec.vocab_size + compute * labelled * dec.hidden_size
    # The condensed slots: the gathered hidden states, LayerNorm and projection (fp32).
    k = condenser.n_last
    head = wide * batch * n * (3 * k * enc.hidden_size + dec.hidden_size)
    # Autocast keeps a bf16 copy of every fp32 trainable weight it casts.
    weights = compute * frozen + (stored + (compute if mixed else 0)) * trainable
    parts = {
        "weights": weights,
        "grads": stored * trainable,
        "optimizer": 2 * stored * trainable,
        "activations": blocks + logits + head,
    }
    parts["total"] = sum(parts.values())
    return parts


def largest_batch_memory(
    condenser: nn.Module, cfg: TrainConfig, checkpointing: bool, precision: str = "bf16-mixed"
) -> int:
    """Bytes of the largest batch `cfg` can make: batch_size rows of max_tokens context and
    max_tokens prompt+completion tokens, every one of those labelled."""
    rows, width = cfg.dataset.batch_size, cfg.dataset.max_tokens
    parts = memory(condenser, rows, width, width, rows * width, checkpointing, precision)
    return parts["total"]


def _adapters_per_block(model: nn.Module) -> int:
    block = flops.blocks(model)[0]
    return sum(1 for name, _ in block.named_modules() if name.endswith("lora_A"))


def largest_batch(
    condenser,
    context: int,
    text: int,
    labelled_per_row: int,
    budget: int,
    ckpt: bool,
    precision: str = "bf16-mixed",
) -> int:
    """The most rows per step that fit in `budget` bytes (0 if not even one)."""
    fixed = memory(condenser, 0, context, text, 0, ckpt, precision)
    one = memory(condenser, 1, context, text, labelled_per_row, ckpt, precision)
    per_row = one["total"] - fixed["total"]
    if ckpt:  # the one-block term grows with the batch like the rest
        per_row = max(per_row, 1)
    return max(0, int((budget - fixed["total"]) // per_row))


def checkpointing_decision(
    condenser: nn.Module, cfg: TrainConfig, precision: str, gpu_memory: float
) -> tuple[bool, int]:
    """Whether training turns gradient checkpointing on for `cfg` on a GPU of `gpu_memory`
    bytes, and the bytes its largest batch needs without it: model.gradient_checkpointing,
    or where that is null, whether the batch would overflow USABLE of the memory."""
    worst = largest_batch_memory(condenser, cfg, False, precision)
    setting = cfg.model.gradient_checkpointing
    return (worst > USABLE * gpu_memory if setting is None else setting), worst


def plan(
    cfg: TrainConfig,
    gpu: str = "H100",
    price: float | None = None,
    mfu: float = 0.4,
    context: int | None = None,
    target: int = 256,
) -> dict[str, Any]:
    """The plan for `cfg` on `gpu`: parameters, memory, largest batch, FLOPs, step time and
    cost for 1, 8 and 16 GPUs. `context` is context tokens per sample (default: max_tokens),
    `target` prompt+completion tokens, of which the completion (labelled) is 3/4."""
    name = gpu.upper()
    if name not in GPUS:
        raise ConfigError(f"--gpu {gpu!r}: not one of {', '.join(GPUS)}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    spec = GPUS[name]
    precision = gpu_precision(cfg.precision)
    condenser = meta_condenser(cfg)
    context = cfg.dataset.max_tokens if context is None else context
    batch, n = cfg.dataset.batch_size, cfg.model.num_condense_tokens
    labelled = labelled_tokens(target)
    budget = int(spec.memory_gib * 2**30 * USABLE)
    per_sample = _flops_per_sample(condenser, context, target, labelled)
    # As training decides it on this GPU, and what it costs: the step time was the
    # no-checkpointing one even where training turns checkpointing on.
    checkpointing, worst = checkpointing_decision(
        condenser, cfg, precision, spec.memory_gib * 2**30
    )
    # A job whose largest batch overflows even so stops at its first long batch: say so,
    # rather than price a run that cannot happen.
    chosen = largest_batch_memory(condenser, cfg, True, precision) if checkpointing else worst
    computed = per_sample
    if checkpointing:
        computed += _flops_per_sample(condenser, context, target, labelled, "recompute")
    step_s = batch * computed / (spec.peak_tflops * 1e12 * mfu)
    tokens = batch * (context + target)  # per GPU per step
    result: dict[str, Any] = {
        "job": cfg.name,
        "encoder": cfg.model.encoder,
        "decoder": cfg.model.decoder,
        "gpu": name,
        "gpu_memory_gb": spec.memory_gb,
        "gpu_memory_gib": spec.memory_gib,
        "gpu_peak_bf16_tflops": spec.peak_tflops,
        "assumptions": {
            "mfu": mfu,
            "context_tokens_per_sample": context,
            "target_tokens_per_sample": target,
            "labelled_tokens_per_sample": labelled,
            "condense_tokens": n,
            "batch_per_gpu": batch,
            "gradient_checkpointing": checkpointing,
            # Whether the job set it, or training would choose it by memory (null).
            "gradient_checkpointing_set_by_job": cfg.model.gradient_checkpointing is not None,
            # What train weighs it by: a batch of max_tokens on both sides, without it.
            "largest_batch_bytes_no_checkpointing": worst,
            "usable_memory_fraction": USABLE,
            "precision": describe_precision(precision),
            "price_usd_per_gpu_hour": price,
        },
        "parameters": sum(p.numel() for p in condenser.parameters()),
        "trainable_parameters": sum(p.numel() for p in condenser.parameters() if p.requires_grad),
        "flops_per_token": per_sample / (context + target),
        "flops_per_sample": per_sample,
        "max_tokens": cfg.dataset.max_tokens,
        "usable_memory_bytes": budget,
        "largest_batch_bytes": chosen,  # with the checkpointing assumed
        "fits": chosen <= budget,
    }
    for ckpt in (False, True):
        key = "checkpointing" if ckpt else "no_checkpointing"
        result[f"memory_{key}"] = memory(
            condenser, batch, context, target, batch * labelled, ckpt, precision
        )
        result[f"largest_batch_{key}"] = largest_batch(
            condenser, context, target, labelled, budget, ckpt, precision
        )
    result["gpus"] = []
    for count in GPU_COUNTS:
        per_million = 1e6 / (count * tokens / step_s)  # seconds per million tokens
        result["gpus"].append(
            {
                "gpus": count,
                "step_s": step_s,
                "tokens_per_s": count * tokens / step_s,
                "gpu_hours_per_million_tokens": count * per_million / 3600,
                "usd_per_million_tokens": None
                if price is None
                else count * per_million / 3600 * price,
            }
        )
    return result


def gpu_precision(precision: str | int) -> str:
    """The Lightning precision a job trains in on the plan's GPUs: "auto" is bf16-mixed
    there (every GPU in GPUS has bf16), a short name is spelled out."""
    precision = str(precision)
    return "bf16-mixed" if precision == "auto" else PRECISION_ALIASES.get(precision, precision)


def describe_precision(precision: str) -> str:
    """What `precision` stores and computes in, as the plan's assumptions say it."""
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
    compute = names.get(precision_dtype(precision), "fp32")
    stored = "fp32" if precision.endswith("-mixed") else compute
    said = f"{compute} frozen weights and compute, {stored} trainable weights and AdamW"
    if compute not in ("bf16", "fp16"):  # the table's peak is the bf16 tensor cores'
        said += f"; step time at the bf16 peak, which {compute} compute falls far short of"
    return said


def labelled_tokens(target: int) -> int:
    """The labelled tokens a plan assumes of `target` prompt+completion tokens: the
    completion, 3/4 of them (at least 1)."""
    return max(1, target * 3 // 4)


def _flops_per_sample(
    condenser, context: int, target: int, labelled: int, part: str = "total"
) -> int:
    n = condenser.num_condense_tokens
    return flops.condenser_step_flops(condenser, [context + n], [target + n], n, labelled)[part]


def _checkpointing(r: dict[str, Any]) -> str:
    """Which gradient checkpointing the plan assumes, and why training would choose it."""
    a = r["assumptions"]
    need = (
        f"a batch of {a['batch_per_gpu']} x {r['max_tokens']} tokens on each side needs"
        f" {a['largest_batch_bytes_no_checkpointing'] / 2**30:.1f} GiB without it"
    )
    if a["gradient_checkpointing_set_by_job"]:
        need = f"as model.gradient_checkpointing sets it; {need}"
    if a["gradient_checkpointing"]:
        return f"gradient checkpointing on ({need}; the step time includes its recompute)"
    return f"gradient checkpointing off ({need})"


def _does_not_fit(r: dict[str, Any]) -> str:
    a = r["assumptions"]
    usable = f"of the {r['usable_memory_bytes'] / 2**30:.1f} GiB usable"
    usable += f" ({a['usable_memory_fraction']:.0%})"
    held = r["memory_checkpointing"]  # weights, gradients, optimizer: the same for any batch
    fixed = held["weights"] + held["grads"] + held["optimizer"]
    if fixed > r["usable_memory_bytes"]:
        # No batch or max_tokens can help: they were advised all the same.
        return (
            f"  DOES NOT FIT: the weights, gradients and optimizer state alone need"
            f" {fixed / 2**30:.1f} GiB {usable}: no batch fits; a GPU with more memory, or"
            " smaller models (times below assume it fit)"
        )
    on = "on" if a["gradient_checkpointing"] else "off"
    ways = [] if a["gradient_checkpointing"] else ["model.gradient_checkpointing true"]
    ways += ["a lower dataset.batch_size"] if a["batch_per_gpu"] > 1 else []
    ways += ["a lower dataset.max_tokens"]
    return (
        f"  DOES NOT FIT: a batch of {a['batch_per_gpu']} x {r['max_tokens']} tokens on each"
        f" side needs {r['largest_batch_bytes'] / 2**30:.1f} GiB with gradient checkpointing"
        f" {on}, {usable}: training would run out of memory: {', '.join(ways[:-1])}"
        f"{' or ' if len(ways) > 1 else ''}{ways[-1]} (times below assume it fit)"
    )


def describe(r: dict[str, Any]) -> str:
    """The plan as a table."""
    a = r["assumptions"]
    gib = 2**30
    lines = [
        (
            f"condense plan: {r['job']} ({r['encoder']} -> {r['decoder']}) on {r['gpu']}"
            f" ({r['gpu_memory_gb']} GB: {r['gpu_memory_gib']:.1f} GiB,"
            f" {r['gpu_peak_bf16_tflops']:.0f} TFLOP/s dense bf16)"
        ),
        (
            f"  assumptions: MFU {a['mfu']}, {a['context_tokens_per_sample']} context +"
            f" {a['target_tokens_per_sample']} prompt+completion tokens per sample"
            f" ({a['labelled_tokens_per_sample']} labelled), N={a['condense_tokens']},"
            f" batch {a['batch_per_gpu']} per GPU, {a['precision']}; {_checkpointing(r)}"
        ),
        (
            f"  parameters: {_count(r['parameters'])}, trainable {_count(r['trainable_parameters'])};"
            f" {_figures(r['flops_per_token'] / 1e9, 3)} GFLOP per token (forward + backward)"
        ),
        "  memory per GPU (GiB)   weights  grads  AdamW  activations  total  largest batch",
    ]
    if not r["fits"]:
        lines.insert(1, _does_not_fit(r))
    for key, label in (
        ("no_checkpointing", "no checkpointing"),
        ("checkpointing", "checkpointing"),
    ):
        m = r[f"memory_{key}"]
        lines.append(
            f"  {label:<22} {m['weights'] / gib:7.1f}  {m['grads'] / gib:5.2f}  {m['optimizer'] / gib:5.2f}"
            f"  {m['activations'] / gib:11.1f}  {m['total'] / gib:5.1f}  {r[f'largest_batch_{key}']:13d}"
        )
    # Not the batch the checkpointing line weighs (max_tokens on both sides): they read as
    # a contradiction where the two differ.
    lines.append(
        f"  (largest batch: of the samples assumed above, {a['context_tokens_per_sample']} +"
        f" {a['target_tokens_per_sample']} tokens)"
    )
    lines.append("  GPUs  step s  tokens/s  GPU-h per M tokens  USD per M tokens")
    for g in r["gpus"]:
        usd = (
            "n/a (--price)"
            if g["usd_per_million_tokens"] is None
            else _figures(g["usd_per_million_tokens"])
        )
        lines.append(
            f"  {g['gpus']:4d}  {_figures(g['step_s']):>6}  {g['tokens_per_s']:8.0f}"
            f"  {_figures(g['gpu_hours_per_million_tokens']):>18}  {usd:>16}"
        )
    return "\n".join(lines)


def _count(n: int) -> str:
    """A parameter count as 8.586B, 108.0M or 149.3K: a small job's read 0.000B."""
    if n >= 1e9:
        return f"{n / 1e9:.3f}B"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _figures(value: float, digits: int = 3) -> str:
    """`value` with at least `digits` significant digits and no exponent: a small job's
    step of 0.0027 s must not print as 0.00."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"
