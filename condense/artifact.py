"""The portable artifact: a folder holding only what training changed, and the ids of
the models it goes with.

    adapter_config.json, adapter_model.safetensors   the encoder's LoRA (peft's own format)
    condenser.safetensors                            condense tokens, norm, projection
    condense_config.json                             models, shapes, format version
    README.md                                        a model card

The frozen encoder base and decoder are referred to by id, never copied.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from condense.config import (
    MAX_SYNTHETIC_PASSAGES,
    SEED_LIMIT,
    ConfigError,
    ModelConfig,
    model_name,
    weights_only_refusal,
)
from condense.files import ARTIFACT_CONFIG_FILE, file_above, swap_in_folder, umask_modes
from condense.model import Condenser

FORMAT_VERSION = 1
WEIGHTS_FILE = "condenser.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
ARTIFACT_FILES = {
    "adapter_config.json",
    ADAPTER_FILE,
    WEIGHTS_FILE,
    ARTIFACT_CONFIG_FILE,
    "README.md",
}
CONDENSER_KEYS = (
    "condense_tokens",
    "norm.weight",
    "norm.bias",
    "projection.weight",
    "projection.bias",
)


class Kind(NamedTuple):
    """What a field a loader reads must hold: JSON types, and a rule on a value of them
    (`ok`), as a user would say it (`words`). A wrong one failed deep inside, as a
    TypeError that named no field and no file, or cut every context to nothing."""

    types: tuple[type, ...]
    words: str
    ok: Callable[[Any], bool] | None = None


INTEGER = Kind((int,), "an integer")
POSITIVE_INTEGER = Kind((int,), "an integer above 0", lambda value: value > 0)
NUMBER = Kind((int, float), "a number")
TEXT = Kind((str,), "a string")
OBJECT = Kind((dict,), "an object")
TEXT_OR_LIST = Kind((str, list), "a string or a list")
BOOLEAN = Kind((bool,), "true or false")
SEED = Kind((int,), f"an integer from 0 to {SEED_LIMIT - 1}", lambda value: 0 <= value < SEED_LIMIT)
PASSAGES = Kind(
    (int,),
    f"an integer from 1 to {MAX_SYNTHETIC_PASSAGES}",
    lambda value: 0 < value <= MAX_SYNTHETIC_PASSAGES,
)
TEXT_LIST = Kind((list,), "a list of strings", lambda value: all(isinstance(v, str) for v in value))
FACTS = Kind(
    (list,),
    "[lo, hi] with 1 <= lo <= hi <= 7",
    lambda value: (
        len(value) == 2 and all(type(v) is int for v in value) and 1 <= value[0] <= value[1] <= 7
    ),
)
CONFIG_FIELDS = {
    "encoder": TEXT,
    "decoder": TEXT,
    "num_condense_tokens": INTEGER,
    "n_last_hidden_states": INTEGER,
    "lora": OBJECT,
}
LORA_FIELDS = {"r": INTEGER, "alpha": NUMBER, "dropout": NUMBER, "target_modules": TEXT_OR_LIST}
# max_tokens, max_characters null: no cut (0 cut every context to nothing); a revision
# null: a folder's model, or the Hub's newest (an artifact's config edited to load that).
OPTIONAL_CONFIG_FIELDS = {
    "max_tokens": POSITIVE_INTEGER,
    "max_characters": POSITIVE_INTEGER,
    "encoder_revision": TEXT,
    "decoder_revision": TEXT,
    # null: no training config recorded, as an artifact saved from Python or imported.
    "training_config": OBJECT,
    # The run's record, which eval rebuilds the validation split from: `"seed": "zero"`
    # was "the training data has changed", a string of tasks a message naming no file.
    "train_data": TEXT,
    "seed": SEED,
    "val_size": POSITIVE_INTEGER,
    "synthetic_passages": PASSAGES,
    "synthetic_facts": FACTS,
    "split_digest": TEXT,
}
# What eval reads of the training config's dataset section (an empty list of tasks, from
# before dataset.tasks refused one, trained on every task).
TRAINING_DATASET_FIELDS = {"tasks": TEXT_LIST, "skip_bad_rows": BOOLEAN}


class ArtifactError(RuntimeError):
    """An artifact folder that is missing, incomplete, or of another format."""


def save_artifact(condenser: Condenser, out: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `condenser`'s trained state to the folder `out`, atomically.

    Everything goes into a temporary sibling first and is swapped in at the end, on disk
    first, so a reader finds the previous artifact or the new one, never half of one (see
    `swap_in_folder` for the systems where it may, for a moment, find none).
    """
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        # Embeddings are never resized here, so peft need not ask the Hub (at every save)
        # whether the base model's vocabulary differs.
        condenser.encoder.save_pretrained(tmp, save_embedding_layers=False)
        state = condenser.state_dict()
        save_file(
            {k: state[k].detach().float().cpu().contiguous() for k in CONDENSER_KEYS},
            tmp / WEIGHTS_FILE,
        )
        config = artifact_config(condenser, extra or {})
        (tmp / ARTIFACT_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(model_card(config))
        umask_modes(tmp)
        _carry_over(out, tmp)
        swap_in_folder(tmp, out)
    except SafetensorError as err:
        # A full disk: safetensors' "I/O error: ... (os error 28)" names no file, and is no
        # user error (a traceback); the OSError it stands for is one line.
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(out)) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# What an artifact saved by an older peft held instead of what a save writes now.
REPLACED_FILES = ("adapter_model.bin",)


def _carry_over(out: Path, new: Path) -> None:
    """Copy into `new` what a user added to the artifact folder `out` (their notes, a
    results folder): `new` replaces it whole, and those went with the old weights. A
    writer killed while copying leaves `out` as it was."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if (new / entry.name).exists() or entry.name in REPLACED_FILES:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, new / entry.name, follow_symlinks=False)


def check_replaceable(out: Path) -> None:
    """Raise ArtifactError unless `out` is free for an artifact: missing, an empty folder,
    or an artifact already (what else it holds is carried over), in a folder that takes
    new files. Writing one replaces the whole folder, so a folder of anything else (a
    checkpoint being imported, a user's documents) is kept."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file: an artifact is a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / ARTIFACT_CONFIG_FILE).is_file():
        raise ArtifactError(
            f"{out} is a folder of other files, not an artifact: not replacing it;"
            " choose another folder"
        )
    blocking = file_above(out)
    if blocking is not None:
        raise ArtifactError(f"{out}: {blocking} is a file, not a folder")
    # The artifact is written beside `out` first (save_artifact), which makes the folders
    # missing above it: tried in the nearest that exists, so that a refusal leaves none.
    there = next(p for p in out.absolute().parents if p.is_dir())
    try:
        # Named as a writer's temporary folder: one a kill leaves is removed with those.
        tempfile.TemporaryDirectory(prefix=f".{out.name}-probe-", dir=there).cleanup()
    except OSError as err:
        raise ArtifactError(f"{out}: cannot write there ({err.strerror or err})") from None


def artifact_config(condenser: Condenser, extra: dict[str, Any]) -> dict[str, Any]:
    """What a loader needs to rebuild the condenser around the frozen models."""
    cfg, base_models = condenser.cfg, condenser.base_models()
    encoder_config, decoder_config = (
        condenser.encoder.get_base_model().config,
        condenser.decoder.config,
    )
    return {
        "format_version": FORMAT_VERSION,
        "encoder": cfg.encoder,
        "decoder": cfg.decoder,
        "encoder_revision": base_models["encoder"]["commit"],
        "decoder_revision": base_models["decoder"]["commit"],
        "num_condense_tokens": cfg.num_condense_tokens,
        "n_last_hidden_states": cfg.n_last_hidden_states,
        "encoder_hidden_size": encoder_config.hidden_size,
        "decoder_hidden_size": decoder_config.hidden_size,
        "encoder_tokenizer": {"name": cfg.encoder, "vocab_size": encoder_config.vocab_size},
        "decoder_tokenizer": {"name": cfg.decoder, "vocab_size": decoder_config.vocab_size},
        "lora": {
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": cfg.lora_target_modules,
        },
        "dtype": "float32",
        **extra,
    }


def load_condenser(
    path_or_id: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Condenser:
    """A Condenser rebuilt from an artifact folder or a Hub repo holding one, with its
    tokenizers attached (`condenser.condense(texts)` works), in eval mode, on `device`.
    A device this machine lacks, or a dtype that is not a torch.dtype, is refused first."""
    from condense.device import inference_device
    from condense.weights import ModelNotFoundError, load_causal_lm, load_tokenizer

    # Before the models load: torch's own errors come after, from deep inside .to().
    device = inference_device(str(device))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (torch.bfloat16, ...), not {dtype!r}")
    folder = local_folder(path_or_id)
    config = read_config(folder)
    cfg = _model_config(folder, config)
    # Read before the models load (minutes for large ones): a damaged file fails first.
    adapter, tensors = load_tensors(folder / ADAPTER_FILE), load_tensors(folder / WEIGHTS_FILE)
    # The Hub commits trained on: a base model's newer revision would meet an adapter and
    # a projection trained for other weights, and condense differently without a word.
    encoder_revision = config.get("encoder_revision")
    decoder_revision = config.get("decoder_revision")
    try:
        condenser = Condenser(
            load_causal_lm(cfg.encoder, dtype, encoder_revision),
            load_causal_lm(cfg.decoder, dtype, decoder_revision),
            cfg,
        )
    except ModelNotFoundError as err:
        # A model folder is recorded by its absolute path: moved, it is found no more, and
        # nothing on the command line names it.
        if not any(_gone_folder(name) for name in (cfg.encoder, cfg.decoder)):
            raise
        raise ModelNotFoundError(
            f"{err} (where it is elsewhere now, say so in {folder / ARTIFACT_CONFIG_FILE}:"
            " its encoder and decoder fields)"
        ) from None
    load_trained_state(condenser, adapter, tensors)
    condenser.encoder_tokenizer = load_tokenizer(cfg.encoder, encoder_revision)
    condenser.decoder_tokenizer = load_tokenizer(cfg.decoder, decoder_revision)
    condenser.max_context_tokens = config.get("max_tokens")
    condenser.max_context_characters = config.get("max_characters")
    # The rest is the run's record; what the condenser itself says is written afresh.
    written = artifact_config(condenser, {}).keys() | {"max_tokens", "max_characters"}
    condenser.training_record = {k: v for k, v in config.items() if k not in written}
    return condenser.to(device).eval()


def _gone_folder(name: str) -> bool:
    """Whether `name` is a model folder's absolute path, as an artifact records one, that
    no longer exists."""
    return Path(name).is_absolute() and not Path(name).exists()


def _model_config(folder: Path, config: dict[str, Any]) -> ModelConfig:
    """The ModelConfig an artifact's (read_config-checked) config describes."""
    lora = config["lora"]
    return _config_from_file(
        folder / ARTIFACT_CONFIG_FILE,
        encoder=config["encoder"],
        decoder=config["decoder"],
        num_condense_tokens=config["num_condense_tokens"],
        n_last_hidden_states=config["n_last_hidden_states"],
        lora_r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        lora_target_modules=lora["target_modules"],
    )


def _config_from_file(path: Path, **fields: Any) -> ModelConfig:
    """The ModelConfig of `fields` read from the file `path`, for inference (no gradient
    checkpointing); a value ModelConfig refuses (r: 0, a negative count) is that file's
    fault, not the command line's, so it is an ArtifactError naming it."""
    try:
        return ModelConfig(**fields, gradient_checkpointing=False)
    except ConfigError as err:
        raise ArtifactError(f"{path}: {err}") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors' load_file; a file it cannot parse (cut short by an interrupted copy or
    download: "header too small", "invalid header length") is an ArtifactError naming it,
    not safetensors' traceback, which names no file."""
    try:
        return load_file(path)
    except SafetensorError as err:
        raise ArtifactError(
            f"{path}: damaged or incomplete ({err}); copy, download or export it again"
        ) from None


def load_trained_state(condenser: Condenser, adapter: dict, tensors: dict) -> None:
    """Put LoRA weights (peft's saved form) and condenser tensors into `condenser`,
    refusing anything that does not fit exactly."""
    # torch refuses a tensor of another shape with a traceback listing every one: an
    # artifact of models of other sizes (a changed id, import's --encoder) gets one line.
    models = f"{condenser.cfg.encoder} -> {condenser.cfg.decoder}"
    lora = get_peft_model_state_dict(condenser.encoder, save_embedding_layers=False)
    _check_shapes("the LoRA adapter", adapter, lora, models)
    _check_shapes(WEIGHTS_FILE, tensors, condenser.state_dict(), models)
    result = set_peft_model_state_dict(condenser.encoder, adapter)
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        raise ArtifactError(
            f"LoRA weights do not fit the encoder: {len(missing_lora)} missing,"
            f" {len(result.unexpected_keys)} unexpected (e.g. {(missing_lora or result.unexpected_keys)[:2]})"
        )
    if set(tensors) != set(CONDENSER_KEYS):
        raise ArtifactError(
            f"{WEIGHTS_FILE} holds {sorted(tensors)}, expected {list(CONDENSER_KEYS)}"
        )
    condenser.load_state_dict(tensors, strict=False)


def _check_shapes(what: str, found: dict, expected: dict, models: str) -> None:
    """ArtifactError naming the first tensor of `found` whose shape is not the one the
    `models` expect (`expected`, by the same names); names only one side has are left to
    the caller."""
    for name in sorted(found):
        shape, wanted = tuple(found[name].shape), expected.get(name)
        if wanted is not None and shape != tuple(wanted.shape):
            raise ArtifactError(
                f"{what} does not fit {models}: {name} is {shape} in the artifact,"
                f" {tuple(wanted.shape)} in these models (trained for others?)"
            )


def read_config(folder: Path) -> dict[str, Any]:
    """The artifact's condense_config.json, checked for completeness and format version."""
    if not folder.is_dir():  # else every file of an artifact was named as missing
        raise ArtifactError(f"{folder}: {'a file, not a' if folder.exists() else 'no such'} folder")
    missing = sorted(f for f in ARTIFACT_FILES - {"README.md"} if not (folder / f).is_file())
    if missing:
        # A run's folder holds its artifact in artifact/: the likeliest slip, so named.
        inner = folder / "artifact"
        hint = f"; did you mean {inner}?" if (inner / ARTIFACT_CONFIG_FILE).is_file() else ""
        raise ArtifactError(
            f"{folder}: not a condense artifact (missing {', '.join(missing)}){hint}"
        )
    config = read_json_object(folder / ARTIFACT_CONFIG_FILE)
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder}: format_version {config.get('format_version')!r}, this condense reads {FORMAT_VERSION}"
        )
    check_fields(folder / ARTIFACT_CONFIG_FILE, config, CONFIG_FIELDS)
    check_fields(folder / ARTIFACT_CONFIG_FILE, config["lora"], LORA_FIELDS, "lora.")
    check_fields(folder / ARTIFACT_CONFIG_FILE, config, OPTIONAL_CONFIG_FIELDS, optional=True)
    # eval reads the tasks and skip_bad_rows of its dataset section to rebuild the split.
    trained = config.get("training_config") or {}
    path, prefix = folder / ARTIFACT_CONFIG_FILE, "training_config."
    check_fields(path, trained, {"dataset": OBJECT}, prefix, optional=True)
    dataset = trained.get("dataset") or {}
    check_fields(path, dataset, TRAINING_DATASET_FIELDS, f"{prefix}dataset.", optional=True)
    return config


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file `path`; an ArtifactError naming the file for one that is
    not JSON text (json's own error names no file) or holds no object (a list, a number)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {err.start}): damaged?") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    if not isinstance(loaded, dict):
        raise ArtifactError(f"{path}: holds {_shown(loaded)}, not a JSON object")
    return loaded


def check_fields(
    path: Path, mapping: dict[str, Any], fields: dict, prefix: str = "", optional: bool = False
) -> None:
    """ArtifactError naming the file `path` and the field of `mapping` that is missing or
    not of its type in `fields` (a loader would fail on it deep inside, naming neither).
    `optional`: a missing or null field passes."""
    for name, kind in fields.items():
        value = mapping.get(name)
        if optional and value is None:
            continue
        if name not in mapping:
            raise ArtifactError(f"{path}: no {prefix}{name} field")
        # true and false are ints to Python, never a count to a user.
        typed = isinstance(value, kind.types) and not (
            isinstance(value, bool) and bool not in kind.types
        )
        if not typed or (kind.ok is not None and not kind.ok(value)):
            raise ArtifactError(f"{path}: {prefix}{name} is {_shown(value)}, expected {kind.words}")


def _shown(value: Any) -> str:
    """`value` as JSON writes it, cut to a line's share."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def model_card(config: dict[str, Any]) -> str:
    """A README.md for the artifact: what it is, how to load it, how it was trained."""
    shown = {k: v for k, v in config.items() if k not in ("lora", "training_config")}
    rows = "\n".join(f"| {k} | {v} |" for k, v in shown.items())
    training = ""
    if config.get("training_config"):
        import yaml

        dumped = yaml.safe_dump(config["training_config"], sort_keys=False)
        training = f"\n## Training configuration\n\n```yaml\n{dumped}```\n"
    return f"""---
library_name: condense
tags: [context-compression, soft-prompt, peft, lora]
---
# Condenser: {config["encoder"]} -> {config["decoder"]}

Condenses a context into {config["num_condense_tokens"]} embeddings in the input space of the
frozen decoder `{config["decoder"]}`, using a LoRA adapter on the encoder `{config["encoder"]}`.
Only the adapter, the condense embeddings, the LayerNorm and the projection are stored here;
both base models are loaded from their own ids, a Hub id at the commit it was trained on
(encoder_revision, decoder_revision below).

```python
from condense import Condenser

condenser = Condenser.from_pretrained("path/or/hub-id")
condensed = condenser.condense(["A long context ..."])  # (1, {config["num_condense_tokens"]}, {config["decoder_hidden_size"]})
```

| field | value |
|---|---|
{rows}
| lora | r={config["lora"]["r"]}, alpha={config["lora"]["alpha"]}, dropout={config["lora"]["dropout"]}, targets={config["lora"]["target_modules"]} |
{training}{EVALUATION_HEADING}

Not evaluated yet: `condense eval --artifact THIS_FOLDER --out eval.json` writes its table here.
"""


EVALUATION_HEADING = "## Evaluation"


def add_evaluation(folder: Path, table: str, command: str, setting: str = "") -> None:
    """Put an evaluation table into the artifact's model card, replacing any earlier one;
    `setting` (where and in what precision it ran) follows the command."""
    from condense.files import leads_out, write_atomic

    card_path = Path(folder) / "README.md"
    if leads_out(card_path, Path(folder)):
        # Its target's text went into the card, which push uploads: a link planted in a
        # shared artifact, to a private file, published the file.
        print(
            f"condense: note: {card_path} is a link out of the artifact; the evaluation's"
            " card replaces the link (what it points to is unchanged)",
            file=sys.stderr,
        )
        card = ""
    else:
        card = card_path.read_text() if card_path.is_file() else ""
    head = card.split(EVALUATION_HEADING)[0].rstrip("\n")
    how = f"`{command}` ({setting})" if setting else f"`{command}`"
    write_atomic(card_path, f"{head}\n\n{EVALUATION_HEADING}\n\nMeasured with {how}:\n\n{table}\n")


def local_folder(path_or_id: str) -> Path:
    """The artifact folder itself, or the Hub repo's files downloaded (or already cached)."""
    if Path(path_or_id).is_dir():
        return Path(path_or_id)
    if Path(path_or_id).exists():  # a checkpoint, a text file: it said "no such folder"
        raise ArtifactError(f"{path_or_id}: a file, not an artifact folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path_or_id)
    except HFValidationError:
        # A path (/abs/..., runs/x/artifact), not an id: the Hub's reason would mislead.
        raise ArtifactError(f"{path_or_id}: no such folder") from None
    try:
        # What loads, not whatever else the repo holds (checkpoints, data: gigabytes).
        return Path(snapshot_download(path_or_id, allow_patterns=sorted(ARTIFACT_FILES)))
    except Exception as err:  # offline, not found, no access: all one line for the user
        raise ArtifactError(
            f"{path_or_id}: not a local folder, and not loadable from the Hub ({type(err).__name__})"
        ) from err


def _remove_leftovers(out: Path) -> None:
    """Delete the temporary folders of earlier writers of `out` that were killed before
    they could (`.NAME-*` being written, `.NAME.old-PID` being swapped out): each is a
    whole artifact's size, and no reader looks at them. Only one process writes an
    artifact folder at a time (global rank 0), so none of them is in use."""
    for stale in out.parent.glob(f".{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


ORIGINAL_ENCODER = "meta-llama/Llama-3.2-1B"
ORIGINAL_DECODER = "mistralai/Mistral-7B-Instruct-v0.2"


def import_original(
    folder: Path, out: Path, encoder: str | None = None, decoder: str = ORIGINAL_DECODER
) -> Path:
    """Turn a checkpoint of the original trainer into an artifact at `out`.

    The original saved a peft adapter and checkpoints/modules.pt = {"modules":
    {"pre_condensed_tokens", "linear_state_dict", "norm_state_dict"}}. The pickle is read
    with weights_only=True, so a file that carries code is refused, not run. The encoder
    defaults to the adapter's base model, the decoder to the original's Mistral.
    """
    from condense.weights import load_causal_lm

    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such folder (a run folder of the original trainer)")
    check_replaceable(out)  # before the models load: minutes lost otherwise
    tokens, linear, norm = _original_modules(folder / "checkpoints" / "modules.pt")
    adapter_dir, adapter_config = _original_adapter_config(folder)
    adapter = _original_adapter(adapter_dir)
    encoder = model_name(
        encoder or adapter_config.get("base_model_name_or_path") or ORIGINAL_ENCODER
    )
    encoder_model = load_causal_lm(encoder)
    tokens = tokens.reshape(-1, tokens.shape[-1])  # the original stored (1, N, He)
    cfg = _config_from_file(
        adapter_dir / "adapter_config.json",
        encoder=encoder,
        decoder=decoder,
        num_condense_tokens=tokens.shape[0],
        n_last_hidden_states=norm["weight"].numel() // encoder_model.config.hidden_size,
        lora_r=adapter_config["r"],
        lora_alpha=adapter_config["lora_alpha"],
        lora_dropout=adapter_config.get("lora_dropout") or 0.0,  # null: none
        lora_target_modules=_sorted_targets(adapter_config["target_modules"]),
    )
    condenser = Condenser(encoder_model, load_causal_lm(decoder), cfg)
    tensors = {
        "condense_tokens": tokens,
        "norm.weight": norm["weight"],
        "norm.bias": norm["bias"],
        "projection.weight": linear["weight"],
        "projection.bias": linear["bias"],
    }
    load_trained_state(condenser, adapter, tensors)
    return save_artifact(condenser, out, {"imported_from": str(folder)})


# What the original trainer's checkpoints/modules.pt holds.
ORIGINAL_MODULES = (
    "{'modules': {pre_condensed_tokens: a tensor, linear_state_dict and norm_state_dict:"
    " weight and bias}}"
)


def _original_modules(path: Path) -> tuple[torch.Tensor, dict, dict]:
    """(condense tokens, projection state, norm state) of the original's modules.pt; an
    ArtifactError naming the file where it cannot be read or holds something else."""
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refusal = weights_only_refusal(err)
        if refusal is None:
            raise ArtifactError(f"{path}: {UNREADABLE_CHECKPOINT}") from None
        raise ArtifactError(f"{path}: refused: {refusal}; import reads weights only") from None
    except OSError as err:  # a folder, no permission
        raise ArtifactError(f"{path}: cannot be read ({err.strerror or err})") from None
    # EOFError for an empty file; for other bytes whatever the unpickler tripped on, often
    # as a bare number ("KeyError: 174812789"): said as what it means, not quoted.
    except (RuntimeError, EOFError, KeyError, IndexError, TypeError, ValueError):
        raise ArtifactError(f"{path}: {UNREADABLE_CHECKPOINT}") from None
    modules = loaded.get("modules") if isinstance(loaded, dict) else None
    parts = [(modules or {}).get(key) for key in ORIGINAL_MODULE_KEYS]
    tokens, linear, norm = parts if isinstance(modules, dict) else (None, None, None)
    if not (isinstance(tokens, torch.Tensor) and _weight_and_bias(linear, norm)):
        raise ArtifactError(
            f"{path}: not a modules file of the original trainer (that holds {ORIGINAL_MODULES})"
        )
    return tokens, linear, norm


ORIGINAL_MODULE_KEYS = ("pre_condensed_tokens", "linear_state_dict", "norm_state_dict")
UNREADABLE_CHECKPOINT = (
    "not a readable original checkpoint: damaged, cut short, or not a file torch saved"
)


def _weight_and_bias(*states: Any) -> bool:
    """Whether each of `states` is a state dict with a weight and a bias tensor."""
    return all(
        isinstance(state, dict)
        and all(isinstance(state.get(key), torch.Tensor) for key in ("weight", "bias"))
        for state in states
    )


# What import_original reads of the original's peft adapter_config.json.
ORIGINAL_ADAPTER_FIELDS = {"r": INTEGER, "lora_alpha": NUMBER, "target_modules": TEXT_OR_LIST}


def _original_adapter_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    """(the folder holding the original's peft adapter, its adapter_config.json): the run's
    folder or its checkpoints/. ArtifactError naming `folder` where neither holds one (a
    bare "[Errno 2]" named only the second place looked), and naming the file where it is
    not JSON or lacks a field import reads."""
    places = (folder, folder / "checkpoints")
    adapter_dir = next((d for d in places if (d / "adapter_config.json").is_file()), None)
    if adapter_dir is None:
        raise ArtifactError(
            f"{folder}: no adapter_config.json, in it or in its checkpoints/: not an original"
            " checkpoint (its peft adapter is missing)"
        )
    path = adapter_dir / "adapter_config.json"
    config = read_json_object(path)
    check_fields(path, config, ORIGINAL_ADAPTER_FIELDS)
    check_fields(path, config, {"lora_dropout": NUMBER}, optional=True)
    return adapter_dir, config


def _sorted_targets(targets: str | list[str]) -> str | list[str]:
    """peft's target_modules in a fixed order; a string ("all-linear", a regex) is one
    name, not letters to sort."""
    return targets if isinstance(targets, str) else sorted(targets)


def _original_adapter(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The LoRA weights beside adapter_config.json; an ArtifactError naming the folder
    where there are none (it named only adapter_model.bin, the older form, as missing)."""
    if (adapter_dir / ADAPTER_FILE).is_file():
        return load_tensors(adapter_dir / ADAPTER_FILE)
    if not (adapter_dir / "adapter_model.bin").is_file():
        raise ArtifactError(
            f"{adapter_dir}: no {ADAPTER_FILE} (nor an older adapter_model.bin) beside"
            " adapter_config.json: the adapter's weights are missing"
        )
    # Older peft saved adapter_model.bin, a pickle: tensors only, no code.
    return torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
