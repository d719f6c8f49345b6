"""`condense bench` and `condense plan` on the tiny pair and the shipped configs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import command_error, main_in_a_fresh_process, tiny_job

from condense.__main__ import main
from condense.job_args import job_path, parse_train
from condense.plan import GPUS, gpu_precision, meta_condenser


def test_bench_times_both_modes_on_the_same_samples(tiny_pair, tmp_path, capsys):
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", precision="bf16-mixed")
    out = tmp_path / "bench.json"
    main(
        [
            "bench",
            "--config",
            str(job),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--mode",
            "static",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    dynamic, static = result["dynamic"], result["static"]
    assert dynamic["target_tokens_per_step"] == static["target_tokens_per_step"]  # same samples
    assert dynamic["model_flops_per_step"] == static["model_flops_per_step"]
    # Static pads both sides to max_tokens and computes logits everywhere.
    assert static["padding_fraction"] > dynamic["padding_fraction"] >= 0
    assert static["computed_flops_per_step"] > dynamic["computed_flops_per_step"]
    assert result["peak_flops_matmul"] > 0 and 0 < dynamic["mfu"]
    assert result["speedup_target_tokens_per_s"] > 0
    printed = capsys.readouterr()
    assert "speed-up" in printed.out
    # Each mode's steps are counted as they run, on stderr, the report alone on stdout.
    for mode in ("dynamic", "static"):
        assert f"condense bench: {mode} (1 warm-up + 2 timed): 100%" in printed.err
        assert "3/3" in printed.err
    assert "timed)" not in printed.out


def test_bench_random_weights_needs_only_the_models_configs(
    tiny_pair, tmp_path, capsys, monkeypatch
):
    """--random-weights times a job's shapes from its models' config.json files alone: no
    weights, no tokenizer, no data are read (the default job's models have shipped configs).
    The steps run on --threads' CPU threads, and torch's own count is given back."""
    import shutil

    import condense.bench

    timed_threads = []
    time_steps = condense.bench.time_steps

    def counted(*args, **kwargs):
        timed_threads.append(torch.get_num_threads())
        return time_steps(*args, **kwargs)

    monkeypatch.setattr(condense.bench, "time_steps", counted)
    threads_before = torch.get_num_threads()

    configs = []
    for role, folder in zip(("encoder", "decoder"), tiny_pair):
        (tmp_path / role).mkdir()
        shutil.copy(os.path.join(folder, "config.json"), tmp_path / role)
        configs.append(str(tmp_path / role))
    job = tiny_job(*configs, tmp_path / "job.yaml", data=str(tmp_path / "no-such-data.jsonl"))
    out = tmp_path / "bench.json"
    argv = ["bench", "--config", str(job), "--random-weights", "--context-tokens", "40"]
    argv += ["--target-tokens", "12", "--steps", "2", "--warmup", "1", "--mode", "static"]
    main([*argv, "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    dynamic, static = result["dynamic"], result["static"]
    rows = result["batch_size"]
    assert result["random_tokens"] == {"context": 40, "prompt_completion": 12}
    assert dynamic["tokens_per_step"] == rows * (40 + 12)
    assert dynamic["target_tokens_per_step"] == rows * 9  # the last 3/4, as plan assumes
    assert dynamic["padding_fraction"] == 0 < static["padding_fraction"]
    assert dynamic["largest_batch_shape"] == [rows, 40, 12, rows * 9]
    assert math.isfinite(dynamic["loss_first"]) and dynamic["mfu"] > 0
    assert "random weights and tokens, 40 context + 12" in capsys.readouterr().out
    assert timed_threads == [1, 1] and result["threads"] == 1  # dynamic, static
    assert torch.get_num_threads() == threads_before


CUT = "must be at most dataset.max_tokens (96), as the job's data is cut to it"


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("bench", ["--random-weights", "--context-tokens", "97"], f"--context-tokens 97 {CUT}"),
        ("bench", ["--random-weights", "--target-tokens", "97"], f"--target-tokens 97 {CUT}"),
        ("bench", ["--context-tokens", "40"], "--context-tokens and --target-tokens need --random-weights"),
        ("plan", ["--target-tokens", "100000"], f"--target-tokens 100000 {CUT}"),
        ("plan", ["--context-tokens", "97", "--target-tokens", "98"],
         f"--context-tokens 97 and --target-tokens 98 {CUT}"),
    ],
)  # fmt: skip
def test_bench_and_plan_refuse_shapes_no_sample_of_the_job_has(
    tiny_pair, tmp_path, capsys, command, flags, message
):
    """Rows wider than max_tokens (the job's data is cut to it, the static mode would cut
    them too), and shapes given to bench without --random-weights (the job's own data
    would be timed instead), are one line naming only the flags given: plan took
    --target-tokens 100000 on a job of 96, and bench blamed a --target-tokens never given."""
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")  # max_tokens 96
    assert command_error([command, "--config", str(job), *flags], capsys) == [
        f"condense: error: {message}"
    ]


def test_the_default_shape_fits_a_job_of_fewer_than_256_tokens(tiny_pair, tmp_path, capsys):
    """--target-tokens defaults to 256 capped at max_tokens: on a job of 96 tokens bench
    --random-weights stopped over a --target-tokens 256 the user never gave."""
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")  # max_tokens 96
    out = tmp_path / "bench.json"
    argv = ["--config", str(job), "--random-weights", "--steps", "1", "--warmup", "0"]
    main(["bench", *argv, "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text())["random_tokens"] == {"context": 96, "prompt_completion": 96}
    main(["plan", "--config", str(job), "--out", str(out)])
    assumed = json.loads(out.read_text())["assumptions"]
    assert (assumed["context_tokens_per_sample"], assumed["target_tokens_per_sample"]) == (96, 96)
    assert "96 context + 96 prompt+completion tokens" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["bench", "plan"])
def test_the_shape_flags_help_states_the_default_the_job_gets(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 256, or dataset.max_tokens where that is smaller)" in help_text


@pytest.mark.parametrize("command", ["bench", "plan"])
@pytest.mark.parametrize("kind", ["folder", "under a file", "the job", "the data"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(
    tiny_pair, tmp_path, capsys, command, kind
):
    """bench timed every step, then stopped at `[Errno 21] Is a directory` (or `[Errno 17]
    File exists` for a path under a file); plan stopped at the raw error too. The job's
    own YAML or data file as --out was overwritten with the results."""
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")
    afile = tmp_path / "afile"
    afile.write_text("")
    data = tmp_path / "data.jsonl"
    data.write_text('{"context": "A cat sat.", "prompt": "Who sat?", "completion": "A cat."}\n')
    kept = job.read_text(), data.read_text()
    if kind == "folder":
        out = tmp_path
        problem = f"--out {out} is a folder: give the JSON file's path ({out}/{command}.json)"
    elif kind == "under a file":
        out = afile / "b.json"
        problem = f"--out {out}: {afile} is a file, not a folder"
    else:
        out, option = (job, "--config") if kind == "the job" else (data, "--data")
        problem = (
            f"--out {out} is the {option} file: give the results another"
            f" name ({tmp_path / command}.json)"
        )
    steps = ["--steps", "1"] if command == "bench" else []
    steps += ["--data", str(data)] if kind == "the data" else []
    # One line and nothing before it: no step ran (each would have drawn a progress bar).
    assert command_error([command, "--config", str(job), *steps, "--out", str(out)], capsys) == [
        f"condense: error: {problem}"
    ]
    assert (job.read_text(), data.read_text()) == kept


def test_an_out_mistake_costs_no_torch_import(tiny_pair, tmp_path):
    """The check runs with the arguments', before bench loads torch (seconds) or a model."""
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")
    status, torch_loaded, stderr = main_in_a_fresh_process(
        ["bench", "--config", str(job), "--out", str(tmp_path)]
    )
    assert (status, torch_loaded, len(stderr)) == (2, False, 1)


def test_an_outs_missing_folders_are_made(tiny_pair, tmp_path):
    out = tmp_path / "new" / "deeper" / "plan.json"
    main(["plan", "--config", str(tiny_job(*tiny_pair, tmp_path / "job.yaml")), "--out", str(out)])
    assert json.loads(out.read_text())["job"]


def test_bench_times_every_step_asked_for_past_one_epoch(tiny_pair, tmp_path, capsys):
    """More steps than one epoch has batches: the steps run on into the sampler's next
    epochs, as training does (they were cut to one epoch, or left none to time)."""
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")
    out = tmp_path / "bench.json"
    main(["bench", "--config", str(job), "--steps", "9", "--warmup", "14", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["batches_per_epoch"] < 14  # the warm-up alone is past the first epoch
    assert len(result["dynamic"]["step_s"]) == result["steps"] == 9
    assert "9 steps after 14 warm-up (over several epochs of" in capsys.readouterr().out


def test_flops_count_matches_torchs_counter(tiny_pair, tmp_path):
    """The shape count against torch's FlopCounterMode on one forward+backward, matmuls only:
    the counter does not see the CPU flash-attention kernels, so attention is left out."""
    from dataclasses import replace

    from torch.utils.flop_counter import FlopCounterMode

    from condense import flops
    from condense.build import build
    from condense.model import Condenser

    cfg = parse_train(["--config", str(tiny_job(*tiny_pair, tmp_path / "job.yaml"))])
    module, data = build(cfg, "32-true")
    condenser: Condenser = module.condenser.train()
    items = data.train_set[:2]
    from condense.batches import Collator

    batch = Collator(data.encoder_tok.pad_token_id, data.decoder_tok.pad_token_id)(items)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = condenser(batch)
        loss.backward()
    counted = counter.get_total_flops()
    n = condenser.num_condense_tokens
    rows, width_e = batch["context_ids"].shape
    width_d = batch["input_ids"].shape[1]
    labelled = int((batch["labels"] != -100).sum())
    parts = flops.step_flops(
        replace(flops.dims(condenser.encoder), attention_width=0),
        replace(flops.dims(condenser.decoder), attention_width=0),
        flops.lora_weights(condenser.encoder),
        condenser.projection.weight.numel(),
        [width_e + n] * rows,
        [width_d + n] * rows,
        rows * n,
        labelled,
    )
    assert parts["total"] == pytest.approx(counted, rel=0.02)


@pytest.mark.parametrize(
    "job",
    [
        # The test job on its ~100-token passages (its own are too short for activations to
        # be a fair share of memory): N=32, LoRA r=16.
        [
            *("--config", str(job_path("test"))),
            *("--dataset.synthetic_facts", "null", "--model.num_condense_tokens", "32"),
        ],
        ["--config", str(job_path("bench")), "--model.compile", "false"],  # N=128, r=128, 512
    ],
    ids=["test-job", "bench-job"],
)
def test_plans_memory_is_within_a_quarter_of_the_measured_peak(job, tmp_path):
    """`condense plan`'s memory for the largest batch bench timed, plus the runtime bench
    measured before the weights, against the peak RSS of real steps of the embedded
    SmolLM2 pair. The plan counts live tensors of eager autograd, so the steps run eager,
    and glibc is told to hand freed blocks back (a fixed mmap threshold), so that RSS is
    live memory and not what malloc keeps for reuse: the CPU's counterpart of CUDA's
    allocated (not reserved) peak, which bench reports on a GPU."""
    out = tmp_path / "bench.json"
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "condense", "bench", *job, "--steps", "1", "--warmup", "1"]
    subprocess.run([*command, "--threads", "1", "--out", str(out)], env=env, check=True)
    result = json.loads(out.read_text())
    measured = result["dynamic"]["peak_memory_bytes"]
    assert result["plan_memory"]["activations"] > 0.3 * result["plan_memory"]["total"]
    assert 0.75 <= result["plan_peak_memory_bytes"] / measured <= 1.25


def test_plan_of_the_default_job_on_h100(tmp_path, capsys):
    out = tmp_path / "plan.json"
    main(
        [
            "plan",
            "--config",
            str(job_path("default")),
            "--gpu",
            "H100",
            "--price",
            "2.5",
            "--out",
            str(out),
        ]
    )
    plan = json.loads(out.read_text())
    assert 8.4e9 < plan["parameters"] < 8.7e9 and 100e6 < plan["trainable_parameters"] < 120e6
    no_ckpt, ckpt = plan["memory_no_checkpointing"], plan["memory_checkpointing"]
    assert ckpt["activations"] < no_ckpt["activations"]
    assert plan["largest_batch_checkpointing"] > plan["largest_batch_no_checkpointing"] >= 1
    assert [g["gpus"] for g in plan["gpus"]] == [1, 8, 16]
    assert plan["gpus"][2]["tokens_per_s"] == pytest.approx(16 * plan["gpus"][0]["tokens_per_s"])
    printed = capsys.readouterr().out
    assert "USD per M tokens" in printed
    # The README quotes this output whole.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = "$ condense plan --config jobs/default.yaml --gpu H100 --price 2.5\n"
    quoted = readme.split(command, 1)[1].split("```", 1)[0]
    assert quoted == printed.replace(f"; plan written to {out}", "")


def test_plans_step_time_counts_the_checkpointing_training_would_turn_on(tmp_path, capsys):
    """On an L40S training turns checkpointing on for the default job (4096 + 4096 tokens
    do not fit without it), and its recompute costs time: plan quoted the step time
    without it, and did not say which training would use."""
    out = tmp_path / "plan.json"

    def plan(gpu: str, *flags: str) -> dict:
        main(["plan", "--config", "default", "--gpu", gpu, *flags, "--out", str(out)])
        return json.loads(out.read_text())

    chosen, off = plan("L40S"), plan("L40S", "--model.gradient_checkpointing", "false")
    assert chosen["assumptions"]["gradient_checkpointing"] is True
    assert off["assumptions"]["gradient_checkpointing"] is False
    ratio = chosen["gpus"][0]["step_s"] / off["gpus"][0]["step_s"]
    assert 1.3 < ratio < 1.5  # the blocks' forward again: about half of their forward+backward
    assert (
        "gradient checkpointing on (a batch of 1 x 4096 tokens on each side needs 46.2 GiB"
        " without it; the step time includes its recompute)"
    ) in capsys.readouterr().out
    assert plan("H100")["assumptions"]["gradient_checkpointing"] is False  # it fits there


@pytest.mark.parametrize("gpu", ["L40S", "A100", "H100"])
def test_plan_and_training_choose_checkpointing_alike(gpu, tmp_path, monkeypatch):
    """plan took an L40S's 48 GB for 48 GiB, where CUDA reports 44.4: a job needing 40-43
    GiB without checkpointing was planned without it, and trained with it."""
    flags = ["--config", "default", "--dataset.max_tokens", "3400"]  # ~41.9 GiB without it
    out = tmp_path / "plan.json"
    main(["plan", *flags, "--gpu", gpu, "--out", str(out)])
    planned = json.loads(out.read_text())["assumptions"]["gradient_checkpointing"]
    import condense.build

    # Training on that GPU, as CUDA reports its memory.
    monkeypatch.setattr(condense.build, "on_gpu", lambda accelerator: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gib = GPUS[gpu].memory_gib
    props = SimpleNamespace(total_memory=int(gib * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    cfg = parse_train(flags)
    chosen = condense.build._use_checkpointing(
        cfg, meta_condenser(cfg), gpu_precision(cfg.precision)
    )
    assert chosen == planned
    assert planned == (gpu != "H100")  # on the two smaller cards: the case is not vacuous


def test_plan_says_when_the_job_does_not_fit(tmp_path, capsys):
    """It priced a batch of 8 on an A10G, which needs 34.6 GiB of its 20, without a word."""
    out = tmp_path / "plan.json"
    main(["plan", "--config", "default", "--gpu", "A10G", "--dataset.batch_size", "8",
          "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["fits"] is False
    assert "DOES NOT FIT: a batch of 8 x 4096 tokens on each side needs" in capsys.readouterr().out
    main(["plan", "--config", "default", "--gpu", "H100", "--out", str(out)])
    assert json.loads(out.read_text())["fits"] is True
    assert "DOES NOT FIT" not in capsys.readouterr().out
    # Mistral-7B as the encoder too: its weights alone exceed an A10G, and a batch of 1
    # was told to lower dataset.batch_size.
    mistral = ["--model.encoder", "mistralai/Mistral-7B-Instruct-v0.2"]
    main(["plan", "--config", "default", "--gpu", "A10G", *mistral, "--out", str(out)])
    said = capsys.readouterr().out
    assert "DOES NOT FIT: the weights, gradients and optimizer state alone need" in said
    assert "no batch fits" in said and "dataset.batch_size" not in said


def test_plan_refuses_an_unknown_gpu(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--config", str(job_path("default")), "--gpu", "B300X"])
    assert exit_.value.code == 2
    assert "not one of" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [("--context-tokens", "0"), ("--target-tokens", "-5"), ("--price", "-1"), ("--price", "0")],
)
def test_plan_refuses_counts_and_prices_below_one(flag, value, capsys):
    """`--context-tokens 0` became max_tokens, and a negative target or price made a plan."""
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--test", flag, value])
    assert exit_.value.code == 2
    name = flag[2:].replace("-", "_")
    assert capsys.readouterr().err.splitlines() == [
        f"condense: error: --{name}: expected more than 0, got {value}"
    ]


@pytest.mark.parametrize("flag", ["--devices=2", "--run-dir=x", "--resume=none", "--max-steps=3"])
def test_bench_refuses_the_options_of_a_run_it_would_ignore(flag, capsys):
    """`--devices 2` timed one process, `--run-dir` wrote nothing there, a missing
    `--resume` path was not looked at: all accepted without a word."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--test", flag])
    assert exit_.value.code == 2
    name = flag[2:].partition("=")[0].replace("-", "_")
    assert capsys.readouterr().err.startswith(
        f"condense: error: condense bench does not use --{name}:"
    )


def test_bench_help_lists_only_the_options_it_takes(capsys):
    """Its usage line listed --devices, --run_dir, --wandb... which bench then refused."""
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    bench_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    for name in ["devices", "run_dir", "resume", "wandb", "hub_repo", "val_batches"]:
        assert f"--{name} " in train_help
        assert f"--{name} " not in bench_help
    assert "--dataset.batch_size " in bench_help and "--steps " in bench_help
    # Hidden from the help alone: the job bench prints is still a whole training job.
    with pytest.raises(SystemExit):
        main(["bench", "--test", "--print_config"])
    printed = capsys.readouterr().out
    assert "max_steps: " in printed and "run_dir: " in printed and "devices: " in printed


def test_plan_asks_for_a_number_where_a_price_is_not_one(capsys):
    """It said "--price: expected null, got 'abc'"."""
    assert command_error(["plan", "--test", "--price", "abc"], capsys) == [
        "condense: error: --price: expected a number above 0 or null, got 'abc'"
    ]


def test_plan_of_a_small_job_shows_its_step_time_and_cost(tmp_path, capsys):
    """The test job's step is milliseconds: the table printed 0.00 s and 0.000 GPU-hours."""
    out = tmp_path / "plan.json"
    main(["plan", "--test", "--price", "2.5", "--out", str(out)])
    one_gpu = json.loads(out.read_text())["gpus"][0]
    assert one_gpu["step_s"] < 0.01  # small enough that two decimals show nothing
    printed = capsys.readouterr().out.splitlines()
    # In units that show it: "0.275B" and "0.5 GFLOP" before (a tiny job read 0.000B, 0.0).
    # (Not by line number: a first run converts the embedded model, and says so above.)
    said = "parameters: 274.6M, trainable 5.6M; 0.516 GFLOP per token"
    assert any(said in line for line in printed), printed
    row = printed[-3].split()
    step, hours, usd = float(row[1]), float(row[3]), float(row[4])
    assert step == pytest.approx(one_gpu["step_s"], rel=0.01)
    assert hours == pytest.approx(one_gpu["gpu_hours_per_million_tokens"], rel=0.01)
    assert usd == pytest.approx(one_gpu["usd_per_million_tokens"], rel=0.01)


def test_plan_counts_the_widths_of_the_jobs_precision():
    from condense.plan import plan

    cfg = parse_train(["--test"])
    plans = {}
    for precision in ("auto", "bf16", "32"):
        cfg.precision = precision
        plans[precision] = plan(cfg)
    # auto is bf16-mixed on every GPU in the table: the plan as before.
    assert plans["auto"] == plans["bf16"]
    assert plans["auto"]["assumptions"]["precision"].startswith("bf16 frozen weights")
    # 32-true stores the frozen weights and computes in fp32: twice the bytes.
    auto, fp32 = plans["auto"]["memory_no_checkpointing"], plans["32"]["memory_no_checkpointing"]
    trainable = plans["auto"]["trainable_parameters"]
    frozen = plans["auto"]["parameters"] - trainable
    # Frozen weights take 2 more bytes each; the trainable ones lose autocast's bf16 copy.
    assert fp32["weights"] - auto["weights"] == 2 * frozen - 2 * trainable
    assert fp32["activations"] > 1.5 * auto["activations"]
    assert (
        plans["32"]["largest_batch_no_checkpointing"]
        < plans["auto"]["largest_batch_no_checkpointing"]
    )
    assert plans["32"]["assumptions"]["precision"].startswith("fp32 frozen weights and compute")
    assert "step time at the bf16 peak" in plans["32"]["assumptions"]["precision"]


def test_long_synthetic_samples_are_shaped_like_the_originals():
    from condense.synthetic import long_synthetic_samples

    samples = long_synthetic_samples(30, seed=1)
    assert {s.task for s in samples} == {"reconstruction", "question_answering", "continuation"}
    words = [len(s.context.split()) for s in samples]
    assert min(words) > 40 and max(words) > 250  # ~1 to 6 passages of ~60-90 words
    assert max(len((s.prompt + s.completion).split()) for s in samples) < 120


def test_bench_under_16_mixed_scales_the_loss_and_takes_the_fp16_peak(tiny_pair, tmp_path):
    # A V100 or T4 trains 16-mixed: foreach AdamW behind a GradScaler, as Lightning runs it,
    # and MFU against fp16 matmuls, not the emulated bf16 those GPUs have.
    from condense.build import build

    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", precision="16-mixed")
    cfg = parse_train(["--config", str(job)])
    module, _ = build(cfg, "16-mixed")
    defaults = module.configure_optimizers()["optimizer"].defaults
    assert defaults["foreach"] and not defaults["fused"]
    out = tmp_path / "bench.json"
    main(["bench", "--config", str(job), "--steps", "2", "--warmup", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["precision"] == "16-mixed" and result["peak_dtype"] == "fp16"
    assert result["peak_flops_matmul"] > 0
    assert all(math.isfinite(result["dynamic"][k]) for k in ("loss_first", "loss_last"))


def test_a_short_precision_name_is_benched_as_training_runs_it(tiny_pair, tmp_path):
    # Lightning trains `--precision bf16` as bf16-mixed: the bench runs and reports it so.
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")
    results = {}
    for precision in ("bf16", "bf16-mixed"):
        out = tmp_path / f"{precision}.json"
        main(["bench", "--config", str(job), "--steps", "1", "--warmup", "1",
              "--precision", precision, "--out", str(out)])  # fmt: skip
        results[precision] = json.loads(out.read_text())
    assert results["bf16"]["precision"] == "bf16-mixed"
    losses = [results[p]["dynamic"]["loss_first"] for p in ("bf16", "bf16-mixed")]
    assert losses[0] == losses[1]


def test_the_matmul_peak_is_no_slower_than_the_models_own_linear():
    """MFU's peak takes the faster of the two layouts the model's products run in: on a CPU
    without bf16 units bf16 `a @ b` ran 15x slower than F.linear, and a peak from it alone
    put MFU far above 1."""
    import time

    import torch
    import torch.nn.functional as F

    from condense.bench import measure_peak

    m, k, n = 256, 576, 1536  # the test job's MLP up-projection over a batch's tokens
    peak = measure_peak([(m, k, n)], torch.device("cpu"), seconds=0.2, dtype=torch.bfloat16)
    x, w = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(n, k, dtype=torch.bfloat16)
    F.linear(x, w)
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        F.linear(x, w)
        runs += 1
    linear = 2 * m * k * n * runs / (time.perf_counter() - start)
    assert peak >= 0.5 * linear


def test_plan_time_and_cost_scale_as_one_over_the_mfu(tmp_path, capsys):
    """--mfu was never given in a test: the step time and cost it scales, and its range."""
    plans = {}
    for mfu in (0.4, 0.2):
        out = tmp_path / f"plan-{mfu}.json"
        main(["plan", "--test", "--gpu", "H100", "--mfu", str(mfu), "--out", str(out)])
        plans[mfu] = json.loads(out.read_text())
    assert plans[0.2]["assumptions"]["mfu"] == 0.2
    for fast, slow in zip(plans[0.4]["gpus"], plans[0.2]["gpus"]):
        assert slow["step_s"] == pytest.approx(2 * fast["step_s"])
        hours = "gpu_hours_per_million_tokens"
        assert slow[hours] == pytest.approx(2 * fast[hours])
    capsys.readouterr()
    assert command_error(["plan", "--test", "--mfu", "1.5"], capsys) == [
        "condense: error: --mfu must be in (0, 1], got 1.5"
    ]


def test_more_threads_than_the_machine_has_are_refused(capsys):
    """torch.set_num_threads(100000) ended the process with a segfault and no word."""
    from tests.conftest import command_error

    cores = os.cpu_count()
    assert command_error(["bench", "--test", "--threads", str(cores + 1)], capsys) == [
        f"condense: error: --threads: at most {cores}, this machine's CPUs, got {cores + 1}"
    ]
