"""`condense bench`: how fast a job trains on this machine, and how well it uses it.

Builds the job's real model and data (condense.build.build), takes the first batches the
training sampler yields, and times real optimizer steps (the condenser's loss under the
job's precision, backward, gradient clipping, AdamW) after a warm-up. `static` mode runs the
same samples the original trainer's way, in the same process: both sides padded to
max_tokens, full-vocabulary logits at every position, and eager blocks (no torch.compile).

MFU is model FLOPs (condense.flops, counted from the real tokens' shapes) per second over
the peak FLOP/s of a matmul of the model's own shapes in the job's compute dtype (bf16
under bf16-mixed, fp16 under 16-mixed, fp32 under 32-true), measured in the same run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from condense import flops
from condense.batches import Collator, LengthGroupedBatchSampler, length_keys
from condense.build import build, check_models, condense_module
from condense.config import TrainConfig
from condense.data import Tokenized
from condense.device import check_devices, on_gpu, precision_dtype, resolve_precision
from condense.model import IGNORE_INDEX, Condenser, is_checkpointing, token_embeddings
from condense.module import CondenseModule
from condense.plan import labelled_tokens, memory
from condense.weights import causal_lm_from_config

MODES = ("dynamic", "static")
Batch = dict[str, torch.Tensor]


def run_bench(
    cfg: TrainConfig,
    steps: int,
    warmup: int,
    mode: str,
    threads: int | None = None,
    random_shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Bench `cfg`: the dynamic (fast) path, and with mode "static" the original's way too.
    `threads` sets torch's CPU threads for the steps (default: torch's choice).
    `random_shape` (context, prompt+completion tokens per row) benches random weights built
    from the models' configs on random tokens of that shape, as `condense plan` assumes:
    no weights, tokenizers or data are loaded."""
    check_devices(cfg.accelerator)
    all_threads = torch.get_num_threads()
    start_rss = _current_rss()  # before the weights: the interpreter, torch, transformers
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.accelerator)
    module, batches, pads, workload = _timed_work(
        cfg, precision, device, warmup + steps, random_shape
    )
    condenser = module.condenser.to(device).train()
    # Weights can be loaded without being resident yet (a dtype other than the file's, on
    # CPU, lands in RSS only when first read): read them all, or the runtime below, RSS
    # less the weights, comes out short, negative even.
    with torch.no_grad():
        for p in condenser.parameters():
            p.sum()
    built_rss = _current_rss()
    if precision.endswith("-true"):  # as Lightning does: every parameter too
        condenser.to(precision_dtype(precision))
    shapes = _matmul_shapes(condenser, batches)
    # The hardware's peak is the best any thread count gets: on a shared machine one thread
    # can beat all of them, and MFU must not gain from running on fewer cores.
    counts = sorted({1, all_threads, threads or all_threads})
    # The peak of the dtype the steps compute in: fp16 where the job runs 16-mixed (a V100
    # or T4 has no fast bf16), fp32 under 32-true (a CPU without bf16 units, where bf16
    # matmuls are emulated, ~8x slower): MFU against any other dtype's peak would mislead.
    dtype = precision_dtype(precision)
    peaks = {n: measure_peak(shapes, device, threads=n, dtype=dtype) for n in counts}
    torch.set_num_threads(threads or all_threads)
    result: dict[str, Any] = {
        "job": cfg.name,
        "precision": precision,
        "device": _device_name(device),
        "threads": threads or all_threads,
        "rss_before_build_bytes": start_rss,
        # What the process holds beside the model's state: RSS after building less the
        # parameters' bytes (the interpreter, libraries, tokenizers, the data).
        "rss_runtime_bytes": built_rss
        - sum(p.numel() * p.element_size() for p in condenser.parameters() if p.is_cpu),
        "batch_size": cfg.dataset.batch_size,
        "steps": steps,
        "warmup": warmup,
        **workload,
    }
    for name in MODES[: 2 if mode == "static" else 1]:
        width = None if name == "dynamic" else cfg.dataset.max_tokens
        padded = [_to(pad_to(b, width, pads), device) for b in batches]
        optimizer = module.configure_optimizers()["optimizer"]
        loss_fn = condenser if name == "dynamic" else static_loss(condenser)
        # The original ran eager: a job's compiled blocks are part of the fast path only.
        stance = "default" if name == "dynamic" else "force_eager"
        with torch.compiler.set_stance(stance):
            timed = time_steps(
                condenser,
                padded,
                optimizer,
                loss_fn,
                precision,
                cfg.optim.grad_clip,
                warmup,
                desc=f"condense bench: {name} ({warmup} warm-up + {steps} timed)",
            )
        result[name] = timed | count(condenser, padded[warmup:], name == "static")
    # What `condense plan` predicts for the largest timed batch, beside what was measured.
    # On CPU the peak is the process's RSS, so the runtime measured at build is added.
    checkpointing = is_checkpointing(condenser.decoder)
    result["plan_memory"] = memory(
        condenser,
        *result["dynamic"]["largest_batch_shape"],
        checkpointing=checkpointing,
        precision=precision,
    )
    runtime = result["rss_runtime_bytes"] if device.type == "cpu" else 0
    result["plan_peak_memory_bytes"] = runtime + result["plan_memory"]["total"]
    for n in counts:  # again after the steps: the other side of any change in load
        peaks[n] = max(peaks[n], measure_peak(shapes, device, threads=n, dtype=dtype))
    torch.set_num_threads(all_threads)
    peak = max(peaks.values())
    result["peak_flops_matmul"] = peak
    result["peak_dtype"] = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, f"fp{dtype.itemsize * 8}"
    )
    result["peak_flops_by_threads"] = peaks
    result["peak_shapes"] = [list(s) for s in shapes]
    for name in MODES:
        if name in result:
            _rates(result[name], peak)
    if "static" in result:
        result["speedup_target_tokens_per_s"] = (
            result["dynamic"]["target_tokens_per_s"] / result["static"]["target_tokens_per_s"]
        )
    return result


def _timed_work(
    cfg: TrainConfig,
    precision: str,
    device: torch.device,
    count: int,
    random_shape: tuple[int, int] | None,
) -> tuple[CondenseModule, list[Batch], tuple[int, int], dict[str, Any]]:
    """What run_bench times: the job's module, its first `count` batches, the pad ids,
    and what the results say of them; random weights and tokens of `random_shape` where
    one is given."""
    if random_shape is not None:
        module = random_module(cfg, precision, device)
        batches = random_batches(module.condenser, count, cfg.dataset.batch_size, *random_shape)
        context, text = random_shape
        # Any pad id: padding is masked.
        return (
            module,
            batches,
            (0, 0),
            {"random_tokens": {"context": context, "prompt_completion": text}},
        )
    module, datamodule = build(cfg, precision)
    samples = datamodule.train_set
    sampler = LengthGroupedBatchSampler(length_keys(samples), cfg.dataset.batch_size, cfg.seed)
    epoch = list(sampler)
    # The training sampler's first batches, into its later epochs where one is too short:
    # what a run starts with, and every step that was asked for.
    pads = datamodule.encoder_tok.pad_token_id, datamodule.decoder_tok.pad_token_id
    collate = Collator(*pads)
    batches = [collate([samples[i] for i in rows]) for rows in first_batches(sampler, count)]
    workload = {
        "batches_per_epoch": len(epoch),
        "padding_fraction_epoch": padding_fraction(epoch, samples, cfg.model.num_condense_tokens),
    }
    return module, batches, pads, workload


def first_batches(sampler: LengthGroupedBatchSampler, count: int) -> list[list[int]]:
    """The first `count` batches `sampler` yields over epochs 0, 1, 2, ... (as training
    sees them), however few batches one epoch holds."""
    rows: list[list[int]] = []
    while len(rows) < count:
        epoch = list(sampler)
        if not epoch:  # the data module refuses such data first; cycling would never end
            raise ValueError("the training data makes no batch")
        rows += epoch[: count - len(rows)]
        sampler.set_epoch(sampler.epoch + 1)
    return rows


def time_steps(
    condenser: Condenser,
    batches: list[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    precision: str,
    grad_clip: float,
    warmup: int,
    desc: str = "condense bench",
) -> dict[str, Any]:
    """Seconds per step of each batch after the first `warmup`, and the peak memory.
    Under 16-mixed the loss is scaled as Lightning's AMP does: gradients unscaled before
    clipping, the step skipped where they overflow. A progress bar named `desc` counts
    the steps on stderr (the bench job's take 3-40 s each on a 2-core CPU)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device
    autocast = _autocast(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    times, losses = [], []
    for index, batch in enumerate(tqdm(batches, desc=desc, unit="step")):
        if index == warmup:
            _reset_peak_memory(device)
        _sync(device)
        start = time.perf_counter()
        with autocast():
            loss, _ = loss_fn(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    return {
        "step_s_median": statistics.median(times),
        "step_s": [round(t, 4) for t in times],
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_memory_bytes": _peak_memory(device),
        "peak_memory_kind": "allocated" if device.type == "cuda" else "rss",
    }


def static_loss(condenser: Condenser) -> Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]:
    """The original trainer's loss: the decoder's own forward, full-vocabulary logits at
    every position, cross-entropy where there is a label."""

    def loss(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        condensed = condenser.encode(batch["context_ids"], batch["context_mask"])  # (B, N, Hd)
        decoder = condenser.decoder
        tokens = token_embeddings(decoder, batch["input_ids"])  # (B, T, Hd)
        embeds = torch.cat([condensed.to(tokens.dtype), tokens], 1)  # (B, N+T, Hd)
        text_mask = batch["attention_mask"]
        n = condensed.shape[1]
        mask = torch.cat([text_mask.new_ones(len(text_mask), n), text_mask], 1)
        logits = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        labels = batch["labels"]
        targets = torch.cat([labels.new_full((len(labels), n), IGNORE_INDEX), labels], 1)
        value = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten())
        return value, (targets != IGNORE_INDEX).sum()

    return loss


def count(condenser: Condenser, batches: list[Batch], full_logits: bool) -> dict[str, Any]:
    """Tokens and FLOPs of the timed batches: model FLOPs on the real tokens (and the logits
    that carry a label), and the FLOPs of the padded shapes the hardware actually ran."""
    n = condenser.num_condense_tokens
    model = computed = 0
    largest = [0, 0, 0, 0]
    real = padded = targets = data_tokens = 0
    for batch in batches:
        rows = len(batch["context_ids"])
        contexts = batch["context_mask"].sum(1).tolist()
        texts = batch["attention_mask"].sum(1).tolist()
        labelled = int((batch["labels"] != IGNORE_INDEX).sum())
        width_e, width_d = batch["context_ids"].shape[1] + n, batch["input_ids"].shape[1] + n
        enc_real, dec_real = [c + n for c in contexts], [t + n for t in texts]
        model += flops.condenser_step_flops(condenser, enc_real, dec_real, rows * n, labelled)[
            "total"
        ]
        logits = rows * (width_d - 1) if full_logits else labelled
        computed += flops.condenser_step_flops(
            condenser, [width_e] * rows, [width_d] * rows, rows * n, logits
        )["total"]
        shape = [rows, batch["context_ids"].shape[1], batch["input_ids"].shape[1], labelled]
        largest = max(largest, shape, key=lambda s: s[0] * (s[1] + s[2]))
        real += sum(enc_real) + sum(dec_real)
        padded += rows * (width_e + width_d)
        targets += labelled
        data_tokens += sum(contexts) + sum(texts)
    steps = len(batches)
    return {
        "target_tokens_per_step": targets / steps,
        "tokens_per_step": data_tokens / steps,
        "padding_fraction": 1 - real / padded,
        "model_flops_per_step": model / steps,
        "computed_flops_per_step": computed / steps,
        # rows, context width, prompt+completion width, labelled: where memory peaks
        "largest_batch_shape": largest,
    }


def padding_fraction(rows: list[list[int]], samples: list[Tokenized], n: int) -> float:
    """Share of the positions both models compute that are padding, over these batches
    (the N condense slots count as real on both sides)."""
    real = padded = 0
    for r in rows:
        contexts = [len(samples[i].context_ids) + n for i in r]
        texts = [len(samples[i].input_ids) + n for i in r]
        real += sum(contexts) + sum(texts)
        padded += len(r) * (max(contexts) + max(texts))
    return 1 - real / padded


def _rates(entry: dict[str, Any], peak: float) -> None:
    """Per-second rates over the timed steps: totals over total time, so that a batch's
    tokens and its time are counted together (the median step is reported beside)."""
    step = statistics.fmean(entry["step_s"])
    entry["step_s_mean"] = step
    entry["target_tokens_per_s"] = entry["target_tokens_per_step"] / step
    entry["tokens_per_s"] = entry["tokens_per_step"] / step
    entry["model_flops_per_s"] = entry["model_flops_per_step"] / step
    entry["mfu"] = entry["model_flops_per_s"] / peak
    entry["computed_flops_per_s"] = entry["computed_flops_per_step"] / step
    entry["hardware_utilization"] = entry["computed_flops_per_s"] / peak


def measure_peak(
    shapes: list[tuple[int, int, int]],
    device: torch.device,
    seconds: float = 0.25,
    threads: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> float:
    """Best FLOP/s of `dtype` products (m, k) x (k, n) of the given shapes on `device`,
    with `threads` CPU threads (default: as set), each shape timed for `seconds` in both
    layouts the model's products take: `a @ b` (backward's input gradients) and
    `F.linear(a, w)`, w (n, k) (every projection's forward). Their kernels differ: bf16 on
    a CPU without bf16 units ran 1.3 GFLOP/s as `a @ b` and 19.6 as `F.linear`, so either
    alone can miss the peak."""
    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        w = b.t().contiguous()
        for product in (partial(torch.matmul, a, b), partial(F.linear, a, w)):
            best = max(best, 2 * m * k * n * _rate(product, device, seconds))
    return best


def _rate(product: Callable[[], Any], device: torch.device, seconds: float) -> float:
    """Calls of `product` per second over `seconds`, after one warm-up call (the kernel
    choice, the first touch of the memory)."""
    product()
    _sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        product()
        runs += 1
    _sync(device)
    return runs / (time.perf_counter() - start)


def random_module(cfg: TrainConfig, precision: str, device: torch.device) -> CondenseModule:
    """The job's module over random weights of its models' architectures (the shipped
    configs of the default models: nothing is downloaded), frozen ones in the compute dtype."""
    check_models(cfg)  # causal LMs; the rows are at most max_tokens (+ N) wide, as the job's are
    dtype = precision_dtype(precision)
    encoder = causal_lm_from_config(cfg.model.encoder, dtype, device)
    decoder = causal_lm_from_config(cfg.model.decoder, dtype, device)
    return condense_module(cfg, encoder, decoder, precision)


def random_batches(
    condenser: Condenser, count: int, rows: int, context: int, text: int
) -> list[Batch]:
    """`count` batches of `rows` random token rows without padding: `context` tokens for
    the encoder and `text` prompt+completion tokens for the decoder, labelled as `condense
    plan` assumes (the last 3/4)."""
    generator = torch.Generator().manual_seed(0)
    vocab_e = condenser.encoder.config.vocab_size
    vocab_d = condenser.decoder.config.vocab_size
    unlabelled = text - labelled_tokens(text)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(vocab_d, (rows, text), generator=generator)
        labels = input_ids.clone()
        labels[:, :unlabelled] = IGNORE_INDEX
        batches.append(
            {
                "context_ids": torch.randint(vocab_e, (rows, context), generator=generator),
                "context_mask": torch.ones(rows, context, dtype=torch.long),
                "input_ids": input_ids,
                "attention_mask": torch.ones(rows, text, dtype=torch.long),
                "labels": labels,
                "group": torch.arange(rows),
            }
        )
    return batches


def _matmul_shapes(condenser: Condenser, batches: list[Batch]) -> list[tuple[int, int, int]]:
    """The model's own big matmuls at a typical batch: the encoder's MLP up and down
    projections over its tokens, and the LM head over the labelled positions."""
    config = condenser.encoder.config
    n = condenser.num_condense_tokens
    tokens = statistics.median(
        int(b["context_mask"].sum()) + n * len(b["context_mask"]) for b in batches
    )
    labelled = statistics.median(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    hidden, inner = config.hidden_size, config.intermediate_size
    vocab = condenser.decoder.config.vocab_size
    dec_hidden = condenser.decoder.config.hidden_size
    return [
        (int(tokens), hidden, inner),
        (int(tokens), inner, hidden),
        (max(1, int(labelled)), dec_hidden, vocab),
    ]


def pad_to(batch: Batch, width: int | None, pads: tuple[int, int]) -> Batch:
    """`batch` as it is (None), or with both sides padded to `width` tokens (static)."""
    if width is None:
        return batch
    fills = {"context_ids": pads[0], "input_ids": pads[1], "labels": IGNORE_INDEX}
    return {  # token rows (B, T) are padded; per-sample values (B,) are not
        key: F.pad(value, (0, width - value.shape[1]), value=fills.get(key, 0))
        if value.dim() == 2
        else value
        for key, value in batch.items()
    }


def _to(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device`, moved before the clock starts."""
    return {key: value.to(device) for key, value in batch.items()}


def _device(accelerator: str) -> torch.device:
    return torch.device("cuda" if on_gpu(accelerator) else "cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _autocast(
    precision: str, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager]:
    if not precision.endswith("-mixed"):
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=precision_dtype(precision))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's counter, or Linux's high-water mark of the RSS (VmHWM),
    which writing 5 to /proc/self/clear_refs resets."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if peak := _proc_status("VmHWM:"):
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    """The resident set size now (Linux), 0 where /proc does not say."""
    return _proc_status("VmRSS:")


def _proc_status(key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def describe(result: dict[str, Any]) -> str:
    """A table for a person: one line per mode, then the speed-up."""
    lines = [
        (
            f"condense bench: {result['job']}, {result['precision']}, batch {result['batch_size']},"
            f" {result['steps']} steps after {result['warmup']} warm-up{_cycled(result)},"
            f" {result['device']}"
        ),
        (
            f"  {result['peak_dtype']} matmul peak (same run):"
            f" {result['peak_flops_matmul'] / 1e12:.2f} TFLOP/s; {_workload(result)}"
        ),
        "  mode     step s  target tok/s  tok/s   padding  TFLOP/s  MFU    peak memory",
    ]
    for name in MODES:
        if name in result:
            r = result[name]
            lines.append(
                f"  {name:<8} {r['step_s_median']:6.2f}  {r['target_tokens_per_s']:12.1f}"
                f"  {r['tokens_per_s']:6.0f}  {r['padding_fraction']:7.3f}"
                f"  {r['model_flops_per_s'] / 1e12:7.3f}  {r['mfu']:.3f}"
                f"  {r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['peak_memory_kind']})"
            )
    measured = result["dynamic"]["peak_memory_bytes"]
    lines.append(
        f"  condense plan's memory for the largest batch: {result['plan_peak_memory_bytes'] / 2**30:.2f}"
        f" GiB (measured {measured / 2**30:.2f}; plan / measured"
        f" {result['plan_peak_memory_bytes'] / measured:.2f})"
    )
    if "speedup_target_tokens_per_s" in result:
        lines.append(f"  speed-up (target tok/s): {result['speedup_target_tokens_per_s']:.2f}x")
    return "\n".join(lines)


def _workload(result: dict[str, Any]) -> str:
    """What the steps ran on: the job's data and its padding, or random rows."""
    if "random_tokens" not in result:
        return f"padding over the first epoch: {result['padding_fraction_epoch']:.3f}"
    shape = result["random_tokens"]
    return (
        f"random weights and tokens, {shape['context']} context +"
        f" {shape['prompt_completion']} prompt+completion tokens per row"
    )


def _cycled(result: dict[str, Any]) -> str:
    """Where the steps ran past one epoch, say so: later epochs repeat the samples."""
    per_epoch = result.get("batches_per_epoch")
    if per_epoch is None or result["warmup"] + result["steps"] <= per_epoch:
        return ""
    return f" (over several epochs of {per_epoch} batches)"
