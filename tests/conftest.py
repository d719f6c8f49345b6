"""Shared fixtures: tiny random models of two architectures with tokenizers trained here,
so tests need no download and run in seconds on a CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.pop("WANDB_API_KEY", None)

from condense.config import DatasetConfig, ModelConfig, OptimConfig, TrainConfig
from condense.synthetic import synthetic_samples


def _corpus() -> list[str]:
    samples = synthetic_samples(60, seed=123)
    return [t for s in samples for t in (s.context, s.prompt, s.completion)]


def _tokenizer(kind: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<s>", "</s>"]
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=special)
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def _save_llama(path: Path, tokenizer, hidden: int, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _save_gpt2(path: Path, tokenizer, hidden: int) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=2,
        n_head=4,
        n_positions=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def condense_cache(tmp_path_factory) -> Path:
    """The cache of converted models for this session, in this process and the ones tests
    start: the embedded model is converted (~15 s) once, by whichever test needs it first,
    and the test of the conversion checks that one instead of converting it again into a
    folder of its own. Not the user's cache: a run of the tests beside this one could be
    converting there, and a stale conversion there would stand in for this code's."""
    cache = tmp_path_factory.mktemp("condense-cache")
    os.environ["CONDENSE_CACHE"] = str(cache)
    return cache


@pytest.fixture
def reset_dynamo():
    """For a test that compiles: dynamo's counters (yielded), and its caches reset after,
    so no compiled graph or recompile budget leaks into later tests."""
    import torch

    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[str, str]:
    """(encoder dir, decoder dir): a Llama of hidden 32 with a word-level tokenizer, and a
    GPT-2 of hidden 48 (with dropout, learned positions) with a byte-level BPE tokenizer."""
    return make_tiny_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def bos_tokenizer():
    """The tiny decoder's byte-level BPE, opening every text with BOS as Llama's and
    Mistral's tokenizers do (neither tiny tokenizer adds any special token)."""
    from tokenizers import processors

    tokenizer = _tokenizer("bpe", 350)
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos[0]} $A", special_tokens=[bos]
    )
    return tokenizer


def make_tiny_pair(root: Path) -> tuple[str, str]:
    """Save the tiny encoder and decoder under `root`; see `tiny_pair`."""
    import torch

    torch.manual_seed(0)
    encoder = _save_llama(root / "encoder", _tokenizer("word", 400), hidden=32)
    decoder = _save_gpt2(root / "decoder", _tokenizer("bpe", 350), hidden=48)
    return str(encoder), str(decoder)


def tiny_config(encoder: str, decoder: str, run_dir: Path, **overrides) -> TrainConfig:
    """A TrainConfig over the tiny pair that trains a few steps in seconds."""
    cfg = TrainConfig(
        data="synthetic",
        max_steps=4,
        seed=0,
        run_dir=str(run_dir),
        name="tiny",
        precision="32-true",
        accelerator="cpu",
        devices=1,
        val_every_n_steps=2,
        log_every_n_steps=1,
        wandb="off",
        model=ModelConfig(
            encoder=encoder, decoder=decoder, num_condense_tokens=4, lora_r=4, lora_alpha=8
        ),
        dataset=DatasetConfig(
            max_tokens=96, batch_size=4, num_workers=0, val_size=12, synthetic_passages=20
        ),
        optim=OptimConfig(lr_condense=1e-2, lr_projection=1e-2, lr_lora=1e-2, warmup_steps=1),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_job(encoder: str, decoder: str, path: Path, **overrides) -> Path:
    """A job YAML over the tiny pair (what `tiny_config` holds), for the entry points that
    take a job file: `condense train --config`, `python -m launch run`."""
    import yaml

    cfg = tiny_config(encoder, decoder, path.parent, **overrides).to_dict()
    cfg.pop("run_dir")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cache_as_hub_commit(cache: Path, repo_id: str, commit: str, model: str | Path) -> None:
    """Put the model folder `model` in the Hub cache `cache` as `repo_id` at `commit`,
    which becomes its main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def shifted_copy(model: str | Path, folder: Path) -> Path:
    """A copy of the model folder `model` in `folder` with every weight 0.1 higher: another
    revision of the same model, as its repo's newer commit would be."""
    import torch

    from condense.weights import load_causal_lm

    shutil.copytree(model, folder)
    shifted = load_causal_lm(str(model))
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(0.1)
    shifted.save_pretrained(folder)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache that huggingface_hub and transformers read and write instead of
    the user's (HF_HUB_OFFLINE is set: nothing is downloaded into it)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def job_under_test(kind: str, tiny_pair, folder: Path, max_steps: int, val_every: int, **extra):
    """(job, overrides) for the tests that run whole processes: "tiny" is a job over the tiny
    pair (seconds), "test" is jobs/test.yaml itself (the embedded SmolLM2 pair and synthetic
    data), cut to a few steps and a small data set so that it takes a minute or two."""
    if kind == "tiny":
        job = tiny_job(*tiny_pair, folder / "job.yaml", max_steps=max_steps,
                       val_every_n_steps=val_every, **extra)  # fmt: skip
        return job, []
    overrides = ["--max-steps", str(max_steps), "--val-every-n-steps", str(val_every),
                 "--dataset.synthetic_passages", "40", "--dataset.val_size", "8"]  # fmt: skip
    for key, value in extra.items():
        overrides += [f"--{key}", str(value)]
    return Path(__file__).resolve().parents[1] / "jobs" / "test.yaml", overrides


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """`rows` as a JSONL data file at `path`."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def document_rows(documents: int, parts: int) -> list[dict]:
    """Rows of `documents` documents in `parts` parts each, every part its own context,
    a document's parts sharing its `group` (an integer id, as a table's often is)."""
    return [
        {"context": f"Doc {d} part {p}.", "prompt": "p", "completion": "c", "group": d}
        for d in range(documents)
        for p in range(parts)
    ]


def command_error(argv: list[str], capsys, status: int = 2) -> list[str]:
    """`condense ARGV`, which must stop with exit `status` (2: an argument or config
    mistake): what it wrote to stderr, as lines."""
    from condense.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == status
    return capsys.readouterr().err.splitlines()


if __name__ == "__main__":
    # `python tests/conftest.py FOLDER`: the tiny pair and FOLDER/job.yaml over it, for the
    # tests that run in an environment without torch (tests/cloud) and train through one
    # that has it.
    import sys

    folder = Path(sys.argv[1])
    print(tiny_job(*make_tiny_pair(folder), folder / "job.yaml", max_steps=4, wandb="off"))


def main_in_a_fresh_process(argv: list[str]) -> tuple[int, bool, list[str]]:
    """`condense` with `argv` in a new interpreter: its exit status, whether it imported
    torch on the way, and its stderr lines."""
    code = (
        "import sys\n"
        "from condense.__main__ import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit_:\n"
        "    print(exit_.code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    status, torch_loaded = out.stdout.split()
    return int(status), torch_loaded == "True", out.stderr.splitlines()
