"""The `condense` command line.

    condense train --test                       # the embedded job, CPU-sized
    condense train --config jobs/default.yaml   # Llama-3.2-1B -> Mistral-7B
    condense train --test --max-steps 50 --model.num_condense_tokens 16
    condense eval --artifact runs/X/artifact --out eval.json
    condense generate --artifact runs/X/artifact --context-file doc.txt --prompt $'Who?\n'
    condense push runs/X/artifact --repo me/my-condenser
    condense import old-run/ --out my-artifact   # a checkpoint of the original trainer
    condense bench --config jobs/bench.yaml --mode static --out bench.json
    condense plan --config jobs/default.yaml --gpu H100 --price 2.5

Every field of the config is a flag; nested ones read `--model.lora_r 64`. Flags accept
dashes or underscores (`--max-steps` is `--max_steps`). A mistake in the arguments, the job
file, the data or the models stops with one line on stderr and a non-zero exit (2 for
arguments and config, 1 for the rest); `--debug` shows the full traceback instead.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from pathlib import Path

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_string_type

from condense.cli_errors import parse, run_reporting_errors
from condense.config import ConfigError, TrainConfig, check_hub_repo
from condense.files import json_out
from condense.job_args import (
    add_debug,
    add_flag,
    command_parser,
    job_parser,
    normalize_flags,
    parse_job,
    parse_train,
)

# What `datasets` accepts as a split's name.
SplitName = restricted_string_type("SplitName", r"^\w+(\.\w+)*\Z")


# Options of `condense train` that no bench step reads, and why: given on the command
# line they were accepted and ignored (`--devices 2` timed one process). A job file may
# set them: it is a training job.
NOT_BENCHED = {
    "max_steps": "--steps and --warmup set its steps",
    "run_dir": "it writes no run",
    "resume": "it starts from the job's models",
    "devices": "it times one process",
    "num_nodes": "it times one process",
    "strategy": "it times one process",
    "val_every_n_steps": "it does not validate",
    "val_batches": "it does not validate",
    "log_every_n_steps": "it logs nothing",
    "wandb": "it logs nothing",
    "wandb_project": "it logs nothing",
    "hub_repo": "it pushes nothing",
    "hub_public": "it pushes nothing",
}


def bench_parser() -> ArgumentParser:
    parser = job_parser(
        "condense bench",
        "Time training steps of a job on this machine: step time, tokens/s, padding, peak"
        " memory, FLOP/s and MFU against a matmul peak measured in the same run, in the"
        " dtype the job computes in (bf16; fp16 under 16-mixed, fp32 under 32-true). Takes"
        " the options of `condense train` that shape a step (model, data, optimizer,"
        " precision, seed); those of a run (run dir, resume, devices, validation, logging,"
        " push) are refused.",
    )
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (after warm-up).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    parser.add_argument(
        "--mode",
        choices=["dynamic", "static"],
        default="dynamic",
        help="dynamic: the fast path alone. static: the same samples also the original's way"
        " (padded to max_tokens, full logits), in the same process, and the speed-up.",
    )
    parser.add_argument(
        "--threads",
        type=PositiveInt | None,
        default=None,
        help="CPU threads for the steps (default: torch's).",
    )
    add_flag(
        parser,
        "random-weights",
        action="store_true",
        help="Random weights built from the models' configs (shipped for the default job's"
        " models: nothing is downloaded) on random tokens of --context-tokens and"
        " --target-tokens per sample, as `condense plan` assumes: a job's speed and memory"
        " without its weights, tokenizers or data.",
    )
    add_shape_flags(parser, note=" With --random-weights only.")
    parser.add_argument(
        "--out", default=None, help="Write the results as JSON here (a file there is replaced)."
    )
    # Still parsed, so that a training job's file that sets them is a valid bench job (and
    # --print_config keeps them, which argparse.SUPPRESS would drop); hidden from --help,
    # which listed them as if bench took them.
    parser.formatter_class = BenchHelp
    return parser


class BenchHelp(DefaultHelpFormatter):
    """jsonargparse's help, without the options of a run that bench refuses (NOT_BENCHED)."""

    def add_usage(self, usage, actions, groups, prefix=None) -> None:
        shown = [action for action in actions if action.dest not in NOT_BENCHED]
        super().add_usage(usage, shown, groups, prefix)

    def add_argument(self, action) -> None:
        if action.dest not in NOT_BENCHED:
            super().add_argument(action)


def push_parser() -> ArgumentParser:
    parser = command_parser(
        "condense push",
        "Upload an artifact to a Hugging Face Hub model repo (token from HF_TOKEN, or the one"
        " `hf auth login` saved).",
    )
    parser.add_argument("artifact", help="The artifact folder (a run's artifact/).")
    parser.add_argument(
        "--repo", required=True, help="OWNER/NAME of the model repo; created if missing."
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="Create the repo public, or push to one that is; without it, private.",
    )
    return add_debug(parser)


def add_inference(parser: ArgumentParser) -> ArgumentParser:
    """The --device and --precision flags of the commands that run a trained condenser."""
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or cuda:N; auto: the GPU if torch sees one, else the CPU.",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "32", "bf16-mixed", "16-mixed"],
        help="auto: bf16-mixed on a GPU (16-mixed where it has no native bf16), 32 on the CPU.",
    )
    return parser


def generate_parser() -> ArgumentParser:
    parser = command_parser(
        "condense generate",
        "Condense a context, then let the decoder answer a prompt from it.",
    )
    parser.add_argument(
        "--artifact", required=True, help="An artifact folder or a Hub repo holding one."
    )
    add_flag(parser, "context-file", required=True, help="A text file with the context.")
    parser.add_argument(
        "--prompt",
        required=True,
        help="What to ask of the condensed context, as it stands: in the form of the training"
        " prompts (the synthetic set's end with a newline: in bash, $'Who?\\n').",
    )
    add_flag(
        parser, "max-new-tokens", type=PositiveInt, default=128, help="Most tokens to generate."
    )
    return add_debug(add_inference(parser))


def eval_parser() -> ArgumentParser:
    parser = command_parser(
        "condense eval",
        "Score an artifact per task with no context, a wrong context, the condensed"
        " context and the full context.",
    )
    parser.add_argument(
        "--artifact", required=True, help="An artifact folder or a Hub repo holding one."
    )
    parser.add_argument(
        "--data",
        default=None,
        help="Samples to score (same sources as training; synthetic ones are fresh passages,"
        " not those it trained on); default: the artifact's validation split (an imported"
        " artifact has none: give --data).",
    )
    parser.add_argument(
        "--split",
        type=SplitName,
        default="train",
        help="The split of a --data folder or Hub dataset to score: test scores a folder's"
        " test.* files or test/ folder, or a dataset's test split (default: train).",
    )
    parser.add_argument(
        "--limit", type=PositiveInt | None, default=None, help="Score only the first N samples."
    )
    parser.add_argument(
        "--out",
        required=True,
        help="JSON results (not .png); a PNG plot goes beside it. Existing files of those"
        " names are replaced.",
    )
    add_flag(
        parser,
        "batch-size",
        type=PositiveInt,
        default=8,
        help="Samples scored and generated at once.",
    )
    add_flag(
        parser,
        "skip-bad-rows",
        action="store_true",
        help="Skip the rows of --data that cannot be used (counted in the results' notes)"
        " instead of stopping at the first.",
    )
    return add_debug(add_inference(parser))


def import_parser() -> ArgumentParser:
    parser = command_parser(
        "condense import",
        "Turn a checkpoint folder of the original trainer (checkpoints/modules.pt"
        " and a peft adapter) into a condense artifact. The pickle is read with"
        " weights_only=True: a file carrying code is refused, not run.",
    )
    parser.add_argument("folder", help="The original run's folder.")
    parser.add_argument("--out", required=True, help="Artifact folder to write.")
    parser.add_argument(
        "--encoder", default=None, help="Encoder id (default: the adapter's base model)."
    )
    parser.add_argument(
        "--decoder",
        default=None,
        help="Decoder id (default: the original's mistralai/Mistral-7B-Instruct-v0.2).",
    )
    return add_debug(parser)


def run_import(argv: list[str]) -> None:
    args = parse(import_parser(), argv)
    from condense.artifact import ORIGINAL_DECODER, import_original

    out = import_original(
        Path(args.folder), Path(args.out), args.encoder, args.decoder or ORIGINAL_DECODER
    )
    print(f"condense: imported {args.folder} into {out}")


def run_eval(argv: list[str]) -> None:
    args = parse(eval_parser(), argv)
    from condense.evaluate import run_eval as evaluate

    command = shlex.join(["condense", "eval", *argv])  # quoted, to be run again as it stands
    evaluate(
        args.artifact,
        args.data,
        args.limit,
        Path(args.out),
        command=command,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        skip_bad_rows=args.skip_bad_rows,
        split=args.split,
    )


def run_push(argv: list[str]) -> None:
    args = parse(push_parser(), argv)
    check_hub_repo(args.repo, "--repo")  # an argument mistake: before torch loads
    from condense.push import push_artifact

    print(
        f"condense: pushed {args.artifact} to {push_artifact(Path(args.artifact), args.repo, args.public)}"
    )


def plan_parser() -> ArgumentParser:
    parser = job_parser(
        "condense plan",
        "Parameters, memory per GPU, largest batch, FLOPs, step time and cost of a job on"
        " 1, 8 and 16 GPUs, from the models' configs alone (no weights are downloaded).",
    )
    parser.add_argument(
        "--gpu", default="H100", help="H100, H100-PCIE, H200, A100-80GB, A100, L40S, A10G."
    )
    parser.add_argument(
        "--price", type=PositiveFloat | None, default=None, help="USD per GPU-hour, for the cost."
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="Assumed model FLOPs utilization.")
    add_shape_flags(parser)
    parser.add_argument(
        "--out", default=None, help="Write the plan as JSON here (a file there is replaced)."
    )
    return parser


TARGET_TOKENS = 256  # prompt + completion tokens of a sample, where max_tokens allows


def add_shape_flags(parser: ArgumentParser, note: str = "") -> None:
    """--context-tokens and --target-tokens: the sample shape plan assumes and bench's
    --random-weights runs (sample_shape fills in their defaults from the job)."""
    add_flag(
        parser,
        "context-tokens",
        type=PositiveInt | None,
        default=None,
        help=f"Context tokens per sample (default: dataset.max_tokens).{note}",
    )
    add_flag(
        parser,
        "target-tokens",
        type=PositiveInt | None,
        default=None,
        help=f"Prompt + completion tokens per sample, 3/4 of them labelled (default:"
        f" {TARGET_TOKENS}, or dataset.max_tokens where that is smaller).{note}",
    )


def sample_shape(cfg: TrainConfig, args: Namespace) -> tuple[int, int]:
    """(context, prompt+completion) tokens per sample of plan and of bench's random rows:
    the flags, else max_tokens and TARGET_TOKENS capped at it, so that the defaults fit
    any job. A flag beyond max_tokens is refused: the job's data never holds such a
    sample (it is cut to max_tokens), and --mode static would cut the rows to it."""
    limit = cfg.dataset.max_tokens
    shape = {
        "--context-tokens": args.context_tokens or limit,
        "--target-tokens": args.target_tokens or min(TARGET_TOKENS, limit),
    }
    too_long = [f"{flag} {value}" for flag, value in shape.items() if value > limit]
    if too_long:
        raise ConfigError(
            f"{' and '.join(too_long)} must be at most dataset.max_tokens ({limit}),"
            " as the job's data is cut to it"
        )
    return shape["--context-tokens"], shape["--target-tokens"]


def job_files(cfg: TrainConfig, args: Namespace) -> list[tuple[str, str]]:
    """The files a job command reads (its data and job YAMLs), with their options, for
    json_out."""
    return [("--data", cfg.data)] + [("--config", str(c)) for c in args.get("config") or []]


def check_planned(argv: list[str]) -> None:
    """A ConfigError for --steps, which plan has not: the nearest option, a job's
    --max_steps, was hinted, and plan reads no step count."""
    if "steps" in given_flags(argv):
        raise ConfigError(
            "unknown option --steps: condense plan gives one step's time and the cost per"
            " million tokens, for no number of steps (condense bench --steps times steps)"
        )


def run_plan(argv: list[str]) -> None:
    check_planned(argv)
    cfg, args = parse_job(plan_parser(), argv)
    context, target = sample_shape(cfg, args)
    out = json_out(args.out, "plan.json", job_files(cfg, args))  # last: it makes the folder
    from condense.files import write_json
    from condense.plan import describe, plan

    result = plan(cfg, args.gpu, args.price, args.mfu, context, target)
    if out:
        write_json(out, result)
    print(describe(result))


def given_flags(argv: list[str]) -> list[str]:
    """The names of the flags on a command line, spelt with underscores: `max_steps`."""
    return [arg.partition("=")[0][2:] for arg in normalize_flags(argv) if arg.startswith("--")]


def check_benched(argv: list[str]) -> None:
    """A ConfigError for a `condense train` option on the line that bench would ignore."""
    ignored = [name for name in given_flags(argv) if name in NOT_BENCHED]
    if ignored:
        name = ignored[0]
        raise ConfigError(f"condense bench does not use --{name}: {NOT_BENCHED[name]}")


def run_bench(argv: list[str]) -> None:
    check_benched(argv)
    cfg, args = parse_job(bench_parser(), argv)
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError(
            f"--steps must be 1 or more and --warmup 0 or more, got {args.steps}, {args.warmup}"
        )
    cores = os.cpu_count() or 1
    if args.threads is not None and args.threads > cores:
        # torch.set_num_threads(100000) ended the process with a segfault and no word.
        raise ConfigError(f"--threads: at most {cores}, this machine's CPUs, got {args.threads}")
    shape = sample_shape(cfg, args) if args.random_weights else None
    if shape is None and (args.context_tokens or args.target_tokens):
        raise ConfigError("--context-tokens and --target-tokens need --random-weights")
    out = json_out(args.out, "bench.json", job_files(cfg, args))  # last: it makes the folder
    from condense.bench import describe, run_bench
    from condense.files import write_json

    result = run_bench(cfg, args.steps, args.warmup, args.mode, args.threads, shape)
    result["command"] = shlex.join(["condense", "bench", *argv])
    if out:
        write_json(out, result)
    print(describe(result))


def run_generate(argv: list[str]) -> None:
    args = parse(generate_parser(), argv)
    from condense.device import load_for_inference
    from condense.generate import context_notes, generate, prompt_notes

    context = read_context(Path(args.context_file))
    condenser = load_for_inference(args.artifact, args.device, args.precision)[0]
    notes = context_notes(condenser, context) + prompt_notes(
        condenser, args.prompt, args.max_new_tokens
    )
    for note in notes:
        print(f"condense: note: {note}", file=sys.stderr)
    print(generate(condenser, condenser.condense([context]), [args.prompt], args.max_new_tokens)[0])


def read_context(path: Path) -> str:
    """The text of a context file; a DataError (one line, naming the flag; exit status 1,
    as for `eval --data`) for one that cannot be read or is not UTF-8."""
    from condense.samples import DataError

    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"--context-file {path}: not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
    except OSError as err:
        raise DataError(f"--context-file {path}: {err.strerror or err}") from None


USAGE = """usage: condense COMMAND [options]

commands:
  train      train a condenser (condense train --help)
  eval       score an artifact from no context to full context (condense eval --help)
  generate   answer a prompt from a condensed context (condense generate --help)
  push       upload an artifact to the Hugging Face Hub (condense push --help)
  import     turn an original-trainer checkpoint into an artifact (condense import --help)
  bench      time training steps of a job on this machine (condense bench --help)
  plan       memory, time and cost of a job on GPUs, from configs alone (condense plan --help)

condense --version prints the installed version.
"""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `condense` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        raise SystemExit(0 if argv else 2)
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"condense {version('condense')}")
        except PackageNotFoundError:  # run from a checkout that pip has not installed
            print("condense (not installed: pip install -e .)")
        return
    command, rest = argv[0], argv[1:]
    commands = {
        "train": lambda: _train(parse_train(rest)),
        "eval": lambda: run_eval(rest),
        "generate": lambda: run_generate(rest),
        "push": lambda: run_push(rest),
        "import": lambda: run_import(rest),
        "bench": lambda: run_bench(rest),
        "plan": lambda: run_plan(rest),
    }
    if command not in commands:
        near = difflib.get_close_matches(command, commands, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        # One line, as every other mistake (the whole usage was 11 lines).
        listed = ", ".join(commands)
        print(
            f"condense: error: unknown command {command!r}{hint}; commands: {listed}",
            file=sys.stderr,
        )
        raise SystemExit(2)  # a bad argument, as argparse's own exit
    run_reporting_errors(commands[command], "condense", debug="--debug" in rest)


def _train(cfg: TrainConfig) -> None:
    from condense.preemption import stop_statuses
    from condense.training import train

    with stop_statuses():
        train(cfg)


if __name__ == "__main__":
    main()
