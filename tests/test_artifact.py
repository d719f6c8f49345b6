"""The portable artifact: exact round trip, file set, atomic writes, the original format."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from condense.__main__ import main
from condense.artifact import ARTIFACT_FILES, ArtifactError, import_original, read_config
from condense.config import ConfigError, ModelConfig
from condense.model import Condenser
from condense.synthetic import synthetic_samples
from condense.weights import ModelNotFoundError, load_causal_lm, load_tokenizer
from tests.conftest import cache_as_hub_commit, command_error, shifted_copy

TEXTS = [s.context for s in synthetic_samples(2, seed=21)[::3]]


def _trained_condenser(tiny_pair) -> Condenser:
    torch.manual_seed(0)
    encoder, decoder = tiny_pair
    cfg = ModelConfig(
        encoder=encoder, decoder=decoder, num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(encoder), load_causal_lm(decoder), cfg)
    with torch.no_grad():  # as if trained: every trainable tensor moved off its init
        for p in condenser.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return condenser.eval()


def _encode(condenser, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return condenser.encode(batch["input_ids"], batch["attention_mask"])


def test_export_then_load_gives_the_same_condensed_embeddings(tiny_pair, tmp_path):
    condenser = _trained_condenser(tiny_pair)
    expected = _encode(condenser, load_tokenizer(tiny_pair[0]), TEXTS)
    condenser.save_pretrained(str(tmp_path / "artifact"))
    loaded = Condenser.from_pretrained(str(tmp_path / "artifact"))
    got = loaded.condense(TEXTS)
    assert got.shape == (2, 4, 48)
    assert (got - expected).abs().max().item() < 1e-6


def test_an_artifact_loads_the_hub_commits_it_was_trained_on(tiny_pair, tmp_path, hub_cache):
    """A base model's newer commit on the Hub was loaded under the adapter and projection
    trained for the old one: the artifact condensed otherwise, without a word."""
    cache = hub_cache
    trained_on, newer = "a" * 40, "b" * 40
    cache_as_hub_commit(cache, "someone/encoder", trained_on, Path(tiny_pair[0]))
    cache_as_hub_commit(cache, "someone/decoder", trained_on, Path(tiny_pair[1]))
    condenser = _trained_condenser(("someone/encoder", "someone/decoder"))
    expected = _encode(condenser, load_tokenizer(tiny_pair[0]), TEXTS)
    artifact = tmp_path / "artifact"
    condenser.save_pretrained(str(artifact))
    assert read_config(artifact)["encoder_revision"] == trained_on
    # The encoder's repo moves on: weights of the same shapes, another commit its main.
    cache_as_hub_commit(cache, "someone/encoder", newer, shifted_copy(tiny_pair[0], tmp_path / "b"))
    got = Condenser.from_pretrained(str(artifact)).condense(TEXTS)
    assert (got - expected).abs().max().item() < 1e-6
    assert (
        _encode(
            _trained_condenser(("someone/encoder", "someone/decoder")),
            load_tokenizer(tiny_pair[0]),
            TEXTS,
        )
        - expected
    ).abs().max().item() > 1e-3  # main is the newer
    # Without the commit it was trained on: one line naming it, not the newest instead.
    shutil.rmtree(cache / "models--someone--encoder" / "snapshots" / trained_on)
    with pytest.raises(ModelNotFoundError, match=f"'someone/encoder' at revision {trained_on} "):
        Condenser.from_pretrained(str(artifact))


def test_condense_refuses_one_text_given_as_a_string(tiny_pair, tmp_path):
    """It condensed each character as a text: (13, 4, 48) for "just a string"."""
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "artifact"))
    loaded = Condenser.from_pretrained(str(tmp_path / "artifact"))
    with pytest.raises(TypeError, match=r"condense\(\[text\]\)"):
        loaded.condense("just a string")


def test_condense_takes_no_text_and_names_a_non_text(tiny_pair, tmp_path):
    """[] was an IndexError inside transformers, [None] a TypeError of slicing."""
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "artifact"))
    loaded = Condenser.from_pretrained(str(tmp_path / "artifact"))
    assert loaded.condense([]).shape == (0, 4, 48)
    # Any iterable, read once: a generator was used up by the type check, then read empty.
    assert loaded.condense(text for text in TEXTS).shape == (2, 4, 48)
    with pytest.raises(TypeError, match=r"takes texts \(str\), not NoneType"):
        loaded.condense(["A text.", None])


def test_a_loaded_condenser_saved_again_cuts_contexts_as_before(tiny_pair, tmp_path):
    """save_pretrained dropped max_tokens and max_characters: the condenser loaded back
    condensed a long context whole, where the first cut it as training did."""
    condenser = _trained_condenser(tiny_pair)
    condenser.save_pretrained(str(tmp_path / "first"), max_tokens=8, max_characters=60)
    first = Condenser.from_pretrained(str(tmp_path / "first"))
    first.save_pretrained(str(tmp_path / "second"))
    second = Condenser.from_pretrained(str(tmp_path / "second"))
    assert (second.max_context_tokens, second.max_context_characters) == (8, 60)
    long = [" ".join(TEXTS * 10)]
    assert (second.condense(long) - first.condense(long)).abs().max().item() < 1e-6


def test_an_artifact_whose_model_folder_moved_says_where_to_name_it(tiny_pair, tmp_path):
    """An artifact records a model folder by its absolute path, and nothing on the
    command line overrides it: the error did not say where it is written."""
    import shutil

    encoder = shutil.copytree(tiny_pair[0], tmp_path / "encoder")
    condenser = _trained_condenser(tiny_pair)
    condenser.cfg.encoder = str(encoder)
    condenser.save_pretrained(str(tmp_path / "art"))
    shutil.move(encoder, tmp_path / "moved")
    with pytest.raises(ModelNotFoundError) as err:
        Condenser.from_pretrained(str(tmp_path / "art"))
    message = str(err.value)
    assert f"{tmp_path / 'encoder'}" in message and "no such folder" in message
    assert f"say so in {tmp_path / 'art' / 'condense_config.json'}" in message
    # A Hub id not in the cache offline is no folder moved: no such hint.
    condenser.cfg.encoder = "someone/some-model"
    condenser.save_pretrained(str(tmp_path / "art"))
    with pytest.raises(ModelNotFoundError) as err:
        Condenser.from_pretrained(str(tmp_path / "art"))
    assert "not in the Hub cache" in str(err.value) and "say so in" not in str(err.value)


def test_a_loaded_condenser_saved_again_keeps_the_record_of_its_run(tiny_pair, tmp_path):
    """The re-saved artifact lost its training data, seed and split: `condense eval` of it
    said it "records no training data" (an imported checkpoint?)."""
    from condense.artifact import read_config

    record = {"train_data": "synthetic", "seed": 3, "val_size": 12, "val_loss": 4.5}
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "first"), **record)
    first = Condenser.from_pretrained(str(tmp_path / "first"))
    first.save_pretrained(str(tmp_path / "second"), note="re-saved")
    second = read_config(tmp_path / "second")
    assert {k: second[k] for k in record} == record and second["note"] == "re-saved"
    assert second["encoder"] == read_config(tmp_path / "first")["encoder"]


def test_artifact_holds_exactly_its_files_and_no_frozen_weights(tiny_pair, tmp_path):
    condenser = _trained_condenser(tiny_pair)
    condenser.save_pretrained(str(tmp_path / "artifact"), max_tokens=96)
    files = {p.name for p in (tmp_path / "artifact").iterdir()}
    assert files == ARTIFACT_FILES
    size = sum(p.stat().st_size for p in (tmp_path / "artifact").iterdir())
    frozen = sum(p.numel() * 4 for p in condenser.parameters() if not p.requires_grad)
    assert size < frozen
    config = read_config(tmp_path / "artifact")
    assert config["num_condense_tokens"] == 4 and config["max_tokens"] == 96
    assert "Condenser.from_pretrained" in (tmp_path / "artifact" / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_artifact_has_the_modes_the_umask_gives(tiny_pair, tmp_path):
    # Built in a tempfile folder (0700) with safetensors files (0600): other users of a
    # shared machine could not read an artifact, or the converted model cache.
    condenser = _trained_condenser(tiny_pair)
    before = os.umask(0o027)
    try:
        condenser.save_pretrained(str(tmp_path / "artifact"), max_tokens=96)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "artifact").stat().st_mode) == 0o750
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "artifact").iterdir()}
    assert modes == {0o640}


def test_a_failed_write_leaves_the_previous_artifact_intact(tiny_pair, tmp_path, monkeypatch):
    condenser = _trained_condenser(tiny_pair)
    condenser.save_pretrained(str(tmp_path / "artifact"))
    before = (tmp_path / "artifact" / "condenser.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("condense.artifact.save_file", broken)
    with torch.no_grad():
        condenser.projection.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        condenser.save_pretrained(str(tmp_path / "artifact"))
    assert (tmp_path / "artifact" / "condenser.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_new_save_keeps_what_a_user_put_in_the_artifact_folder(tiny_pair, tmp_path):
    """A run's next best, or an import into the same folder, replaced the folder whole:
    notes and results put there were deleted without a word."""
    condenser = _trained_condenser(tiny_pair)
    artifact = tmp_path / "artifact"
    condenser.save_pretrained(str(artifact))
    (artifact / "notes.txt").write_text("precious")
    (artifact / "results").mkdir()
    (artifact / "results" / "eval.json").write_text("{}")
    (artifact / "adapter_model.bin").write_bytes(b"an older peft's weights")
    with torch.no_grad():
        condenser.projection.weight.add_(1.0)
    condenser.save_pretrained(str(artifact))
    assert {p.name for p in artifact.iterdir()} == ARTIFACT_FILES | {"notes.txt", "results"}
    assert (artifact / "notes.txt").read_text() == "precious"
    assert (artifact / "results" / "eval.json").read_text() == "{}"
    loaded = Condenser.from_pretrained(str(artifact))
    assert torch.equal(loaded.projection.weight, condenser.projection.weight)


def test_the_next_write_removes_what_killed_writers_left(tiny_pair, tmp_path):
    condenser = _trained_condenser(tiny_pair)
    # A writer killed mid-export, and one killed between moving the old folder aside and
    # deleting it: each left a folder as large as an artifact.
    for leftover in (".artifact-k3j2_x", ".artifact.old-4242"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    condenser.save_pretrained(str(tmp_path / "artifact"))
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_a_writer_killed_while_swapping_leaves_an_artifact(tiny_pair, tmp_path, monkeypatch):
    # The old folder used to be renamed aside before the new one was renamed in: a kill
    # between the two left no artifact/ at all, only a hidden .artifact.old-PID.
    import os

    from condense.files import _exchange

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no folder exchange on this system: the two renames are the fallback")
    (tmp_path / "a").rmdir(), (tmp_path / "b").rmdir()
    condenser = _trained_condenser(tiny_pair)
    condenser.save_pretrained(str(tmp_path / "artifact"))
    before = (tmp_path / "artifact" / "condenser.safetensors").read_bytes()
    rename = os.replace

    def killed_after_one(*args):
        monkeypatch.setattr(os, "replace", _killed)
        rename(*args)

    monkeypatch.setattr(os, "replace", killed_after_one)
    with torch.no_grad():
        condenser.projection.weight.add_(1.0)
    try:
        condenser.save_pretrained(str(tmp_path / "artifact"))
    except KeyboardInterrupt:
        pass
    after = (tmp_path / "artifact" / "condenser.safetensors").read_bytes()
    assert after != before  # the new one, swapped in by one exchange
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def _killed(*_):
    raise KeyboardInterrupt


def test_where_folders_cannot_be_exchanged_the_new_one_still_replaces_the_old(
    tiny_pair, tmp_path, monkeypatch
):
    monkeypatch.setattr("condense.files._exchange", lambda *_: False)
    condenser = _trained_condenser(tiny_pair)
    condenser.save_pretrained(str(tmp_path / "artifact"))
    with torch.no_grad():
        condenser.projection.weight.add_(1.0)
    condenser.save_pretrained(str(tmp_path / "artifact"))
    loaded = Condenser.from_pretrained(str(tmp_path / "artifact"))
    assert torch.equal(loaded.projection.weight, condenser.projection.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


@pytest.mark.parametrize("swapped, tensor", [("decoder", "projection.bias"), ("encoder", "lora_A")])
def test_an_artifact_for_models_of_other_sizes_is_refused_in_one_line(
    swapped, tensor, tiny_pair, tmp_path, capsys
):
    """Its config pointed at a model of another hidden size (the same architecture and
    tokenizer): torch's size-mismatch traceback, now one line naming the tensor."""
    from tests.conftest import _save_gpt2, _save_llama

    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "art"))
    model = tmp_path / f"wider-{swapped}"
    if swapped == "decoder":
        _save_gpt2(model, load_tokenizer(tiny_pair[1]), hidden=64)
    else:
        _save_llama(model, load_tokenizer(tiny_pair[0]), hidden=48)
    config_path = tmp_path / "art" / "condense_config.json"
    config = json.loads(config_path.read_text())
    config[swapped] = str(model)
    config_path.write_text(json.dumps(config))
    (tmp_path / "c.txt").write_text(TEXTS[0])
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--artifact", str(tmp_path / "art"), "--context-file",
              str(tmp_path / "c.txt"), "--prompt", "Who?"])  # fmt: skip
    assert exit_.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("condense: error: ") and "does not fit" in line and tensor in line


@pytest.mark.parametrize("given", ["runs/x/artifact", "/no/such/artifact"])
def test_a_missing_artifact_path_is_named_as_a_missing_folder(given):
    """It read 'not a local folder, and not loadable from the Hub (HFValidationError)'."""
    with pytest.raises(ArtifactError, match=f"^{given}: no such folder$"):
        Condenser.from_pretrained(given)


def test_an_artifact_path_to_a_file_says_it_is_a_file(tmp_path):
    """A checkpoint or a text file given as --artifact was "no such folder"."""
    (tmp_path / "best.ckpt").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"best.ckpt: a file, not an artifact folder$"):
        Condenser.from_pretrained(str(tmp_path / "best.ckpt"))


def test_an_incomplete_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "condense_config.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ArtifactError, match="not a condense artifact") as err:
        Condenser.from_pretrained(str(tmp_path))
    assert "\n" not in str(err.value)


def test_a_run_folder_given_for_its_artifact_is_pointed_to_the_artifact(tiny_pair, tmp_path):
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "artifact"))
    with pytest.raises(ArtifactError, match="did you mean .*artifact\\?"):
        Condenser.from_pretrained(str(tmp_path))
    Condenser.from_pretrained(str(tmp_path / "artifact"))  # where it points does load


def _generate_error(artifact, tmp_path, capsys) -> str:
    """`condense generate --artifact ARTIFACT`'s last stderr line; it must end with status 1."""
    (tmp_path / "c.txt").write_text(TEXTS[0])
    argv = ["generate", "--artifact", str(artifact), "--context-file", str(tmp_path / "c.txt")]
    return command_error([*argv, "--prompt", "Who?"], capsys, status=1)[-1]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: "{not json", "not valid JSON (Expecting property name enclosed in double quotes"),
        (lambda c: "[1, 2]", "holds [1, 2], not a JSON object"),
        (lambda c: json.dumps(c | {"num_condense_tokens": "four"}),
         'num_condense_tokens is "four", expected an integer'),
        (lambda c: json.dumps(c | {"lora": c["lora"] | {"alpha": None}}),
         "lora.alpha is null, expected a number"),
        (lambda c: json.dumps(c | {"num_condense_tokens": -4}),
         "model.num_condense_tokens must be positive, got -4"),
        (lambda c: json.dumps(c | {"training_config": "none"}),
         'training_config is "none", expected an object'),
        (lambda c: json.dumps(c | {"training_config": {"dataset": []}}),
         "training_config.dataset is [], expected an object"),
        # Generate and eval cut every context to nothing (-3: a traceback of the tokenizer).
        (lambda c: json.dumps(c | {"max_tokens": 0}), "max_tokens is 0, expected an integer above 0"),
        (lambda c: json.dumps(c | {"max_tokens": -3}), "max_tokens is -3, expected an integer above"),
        (lambda c: json.dumps(c | {"max_characters": 0}), "max_characters is 0, expected an integer"),
    ],
    ids=[
        "not-json", "a-list", "a-string-count", "a-null-alpha", "a-negative-count",
        "a-string-training-config", "a-list-training-dataset", "max-tokens-zero",
        "max-tokens-negative", "max-characters-zero",
    ],
)  # fmt: skip
def test_a_damaged_artifact_config_is_one_line_naming_the_file(
    damage, message, tiny_pair, tmp_path, capsys
):
    """JSONDecodeError, AttributeError ('list' object has no attribute 'get') and TypeError
    tracebacks before; a negative count blamed the command line (status 2)."""
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "art"))
    path = tmp_path / "art" / "condense_config.json"
    path.write_text(damage(json.loads(path.read_text())))
    line = _generate_error(tmp_path / "art", tmp_path, capsys)
    assert line.startswith(f"condense: error: {path}: {message}")


@pytest.mark.parametrize("name", ["condenser.safetensors", "adapter_model.safetensors"])
@pytest.mark.parametrize("kept", [0, 5, 200])  # "header too small"; "...not fully covered"
def test_a_truncated_artifact_weights_file_is_named_as_damaged(
    name, kept, tiny_pair, tmp_path, capsys
):
    """safetensors' SafetensorError traceback before, naming no file."""
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "art"))
    path = tmp_path / "art" / name
    path.write_bytes(path.read_bytes()[:kept])
    line = _generate_error(tmp_path / "art", tmp_path, capsys)
    assert line.startswith(f"condense: error: {path}: damaged or incomplete (")


def _original_checkpoint(tiny_pair, folder):
    """What the original trainer saved: a peft adapter, and checkpoints/modules.pt."""
    torch.manual_seed(1)
    encoder = get_peft_model(
        load_causal_lm(tiny_pair[0]),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        ),
    )
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    encoder.save_pretrained(folder)
    tokens = torch.randn(1, 6, 32) * 0.02  # (1, N, encoder hidden), as the original stored it
    linear = torch.nn.Linear(2 * 32, 48)
    norm = torch.nn.LayerNorm(2 * 32)
    (folder / "checkpoints").mkdir()
    modules = {
        "pre_condensed_tokens": tokens,
        "linear_state_dict": linear.state_dict(),
        "norm_state_dict": norm.state_dict(),
    }
    torch.save({"modules": modules}, folder / "checkpoints" / "modules.pt")
    return encoder, tokens, linear, norm


def test_an_original_checkpoint_imports_and_condenses(tiny_pair, tmp_path, capsys):
    lora_encoder, tokens, linear, norm = _original_checkpoint(tiny_pair, tmp_path / "original")
    # No --encoder: the adapter's base model, as the original recorded it (README).
    main(
        ["import", str(tmp_path / "original"), "--out", str(tmp_path / "new" / "artifact")]
        + ["--decoder", tiny_pair[1]]
    )
    assert "imported" in capsys.readouterr().out
    assert read_config(tmp_path / "new" / "artifact")["encoder"] == tiny_pair[0]
    condenser = Condenser.from_pretrained(str(tmp_path / "new" / "artifact"))
    assert condenser.num_condense_tokens == 6 and condenser.n_last == 2
    assert torch.equal(condenser.condense_tokens, tokens[0])
    assert torch.equal(condenser.projection.weight, linear.weight)
    assert torch.equal(condenser.norm.weight, norm.weight)
    # The imported LoRA is the original's: the encoder gives the same hidden states.
    ids = load_tokenizer(tiny_pair[0])(TEXTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = lora_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        ours = condenser.encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(ours, theirs)
    assert condenser.condense(TEXTS).shape == (2, 6, 48)


def test_an_import_from_relative_model_folders_loads_from_any_folder(
    tiny_pair, tmp_path, monkeypatch
):
    """The artifact recorded the folders as typed, so from another working folder it
    failed to load (and the names read as Hub ids); now it records them absolute."""
    _original_checkpoint(tiny_pair, tmp_path / "original")
    base = Path(tiny_pair[0]).parent.parent
    encoder, decoder = (str(Path(name).relative_to(base)) for name in tiny_pair)
    monkeypatch.chdir(base)
    main(["import", str(tmp_path / "original"), "--out", str(tmp_path / "artifact"),
          "--encoder", encoder, "--decoder", decoder])  # fmt: skip
    monkeypatch.chdir(tmp_path)
    config = read_config(tmp_path / "artifact")
    adapter = json.loads((tmp_path / "artifact" / "adapter_config.json").read_text())
    assert (config["encoder"], config["decoder"]) == tuple(tiny_pair)
    assert adapter["base_model_name_or_path"] == tiny_pair[0]
    assert Condenser.from_pretrained(str(tmp_path / "artifact")).condense(TEXTS).shape[0] == 2


def test_an_original_adapter_with_a_null_dropout_imports_without_dropout(tiny_pair, tmp_path):
    # A TypeError traceback before: null went on to ModelConfig as the dropout.
    _original_checkpoint(tiny_pair, tmp_path / "original")
    adapter = tmp_path / "original" / "adapter_config.json"
    if not adapter.is_file():
        adapter = tmp_path / "original" / "checkpoints" / "adapter_config.json"
    _edit_json(adapter, lora_dropout=None)
    main(["import", str(tmp_path / "original"), "--out", str(tmp_path / "artifact"),
          "--encoder", tiny_pair[0], "--decoder", tiny_pair[1]])  # fmt: skip
    assert read_config(tmp_path / "artifact")["lora"]["dropout"] == 0.0


def test_import_refuses_to_replace_a_folder_that_is_not_an_artifact(tiny_pair, tmp_path, capsys):
    _original_checkpoint(tiny_pair, tmp_path / "original")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("years of work")
    models = ["--encoder", tiny_pair[0], "--decoder", tiny_pair[1]]
    for out in ("docs", "original"):  # someone's folder; the checkpoint being imported
        with pytest.raises(SystemExit) as stop:
            main(["import", str(tmp_path / "original"), "--out", str(tmp_path / out), *models])
        assert stop.value.code != 0
        assert "not replacing it" in capsys.readouterr().err
    assert (tmp_path / "docs" / "thesis.txt").read_text() == "years of work"
    assert (tmp_path / "original" / "checkpoints" / "modules.pt").is_file()
    # An artifact is replaced: importing twice into one folder is allowed.
    for _ in range(2):
        main(["import", str(tmp_path / "original"), "--out", str(tmp_path / "artifact"), *models])
    assert "imported" in capsys.readouterr().out


def test_an_original_checkpoint_is_read_without_unpickling_code(tiny_pair, tmp_path):
    _original_checkpoint(tiny_pair, tmp_path / "original")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"modules": Evil()}, tmp_path / "original" / "checkpoints" / "modules.pt")
    with pytest.raises(ArtifactError) as refused:
        import_original(
            tmp_path / "original", tmp_path / "artifact", encoder=tiny_pair[0], decoder=tiny_pair[1]
        )
    assert not (tmp_path / "artifact").exists()
    # Why, not torch's advice to load it with weights_only=False (cut off before its warning).
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'original' / 'checkpoints' / 'modules.pt'}: refused")
    assert message.endswith(
        "it names print, which weights-only loading does not allow (code to run,"
        " or a damaged file); import reads weights only"
    )
    assert "weights_only` set to `False" not in message


@pytest.mark.parametrize("out", ["a-file/artifact", "/proc/artifact"])
def test_import_to_where_nothing_can_be_written_is_one_line_before_the_models_load(
    out, tiny_pair, tmp_path, monkeypatch, capsys
):
    """It loaded both models (minutes for real ones), then failed on a raw errno."""
    import condense.weights

    _original_checkpoint(tiny_pair, tmp_path / "original")
    (tmp_path / "a-file").write_text("")
    out = out if out.startswith("/") else str(tmp_path / out)

    def load(*_):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(condense.weights, "load_causal_lm", load)
    capsys.readouterr()  # the original's making
    with pytest.raises(SystemExit) as stop:
        main(["import", str(tmp_path / "original"), "--out", out, "--decoder", tiny_pair[1]])
    assert stop.value.code == 1
    expected = f"{tmp_path / 'a-file'} is a file, not a folder" if "a-file" in out else "cannot"
    assert capsys.readouterr().err.startswith(f"condense: error: {out}: {expected}")


def test_import_without_its_required_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["import", "some-folder"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "condense: error: missing --out (required)"
    ]


def test_import_of_a_missing_folder_says_so(tmp_path, capsys):
    # It named the first file it looked for inside: "nope/checkpoints/modules.pt: not a
    # readable original checkpoint ([Errno 2] ...)".
    with pytest.raises(SystemExit) as stop:
        main(["import", str(tmp_path / "nope"), "--out", str(tmp_path / "art")])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"condense: error: {tmp_path / 'nope'}: no such folder (a run folder of the original"
        " trainer)"
    )
    assert not (tmp_path / "art").exists()


def _cut(path):
    path.write_bytes(path.read_bytes()[:100])


def _drop_projection_bias(path):
    saved = torch.load(path, weights_only=True)
    del saved["modules"]["linear_state_dict"]["bias"]
    torch.save(saved, path)


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "adapter_config.json").write_text('{"r": 4,'),
         "{folder}/adapter_config.json: not valid JSON ("),
        (lambda f: (f / "adapter_config.json").unlink(),
         "{folder}: no adapter_config.json, in it or in its checkpoints/"),
        (lambda f: (f / "adapter_model.safetensors").unlink(),
         "{folder}: no adapter_model.safetensors (nor an older adapter_model.bin)"),
        (lambda f: _cut(f / "adapter_model.safetensors"),
         "{folder}/adapter_model.safetensors: damaged or incomplete ("),
        (lambda f: _edit_json(f / "adapter_config.json", r=0),
         "{folder}/adapter_config.json: model.lora_r must be positive, got 0"),
        # A traceback: EOFError, with no message at all; then "(EOFError)".
        (lambda f: (f / "checkpoints" / "modules.pt").write_bytes(b""),
         ("{folder}/checkpoints/modules.pt: not a readable original checkpoint: damaged, cut"
         " short, or not a file torch saved")),
        # "(544502645)": the unpickler's KeyError, a memo index read from the text.
        (lambda f: (f / "checkpoints" / "modules.pt").write_bytes(b"just some text\n"),
         ("{folder}/checkpoints/modules.pt: not a readable original checkpoint: damaged, cut"
         " short, or not a file torch saved")),
        # "('int' object is not subscriptable)", and a KeyError traceback for a projection
        # without its bias.
        (lambda f: torch.save(174812789, f / "checkpoints" / "modules.pt"),
         ("{folder}/checkpoints/modules.pt: not a modules file of the original trainer (that"
         " holds {{'modules': {{pre_condensed_tokens: a tensor, linear_state_dict and")),
        (lambda f: _drop_projection_bias(f / "checkpoints" / "modules.pt"),
         "{folder}/checkpoints/modules.pt: not a modules file of the original trainer"),
        # "it names which weights-only loading ...": torch named no global to quote.
        (lambda f: (f / "checkpoints" / "modules.pt").write_bytes(b"\x80\x02P0\n."),
         ("{folder}/checkpoints/modules.pt: refused: not weights alone: it holds what"
          " weights-only loading does not allow")),
    ],
    ids=["config-not-json", "no-config", "no-weights", "weights-cut", "r-zero", "modules-empty",
         "modules-text", "modules-a-number", "modules-no-bias", "modules-no-global"],
)  # fmt: skip
def test_import_of_a_damaged_original_is_one_line_naming_the_file(
    damage, message, tiny_pair, tmp_path, capsys
):
    """A JSONDecodeError traceback, a bare "[Errno 2]" naming checkpoints/adapter_config.json,
    and a missing adapter_model.bin (the older form) before."""
    folder = tmp_path / "original"
    _original_checkpoint(tiny_pair, folder)
    damage(folder)
    with pytest.raises(SystemExit) as exit_:
        main(["import", str(folder), "--out", str(tmp_path / "new" / "artifact"),
              "--encoder", tiny_pair[0], "--decoder", tiny_pair[1]])  # fmt: skip
    assert exit_.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("condense: error: " + message.format(folder=folder))
    # A refused import left new/ behind, empty: made before the checkpoint was read.
    assert not (tmp_path / "new").exists()


def test_from_pretrained_refuses_a_device_or_dtype_before_the_models_load(
    tiny_pair, tmp_path, monkeypatch
):
    """device="cuda" on a machine without one loaded both models, then failed 13 frames
    deep in torch; dtype="bf16" was an AttributeError of torch."""
    import condense.weights

    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "artifact"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(condense.weights, "load_causal_lm", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ConfigError, match="--device cuda but torch sees 0 GPU"):
        Condenser.from_pretrained(str(tmp_path / "artifact"), device="cuda")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        Condenser.from_pretrained(str(tmp_path / "artifact"), dtype="bf16")


def test_an_artifact_and_an_original_adapter_with_a_float_alpha_load(tiny_pair, tmp_path):
    """The file check takes a number for the LoRA alpha (peft writes what it was given,
    16.0 as well as 16); the config's type check refused 8.0 as not an integer."""
    _trained_condenser(tiny_pair).save_pretrained(str(tmp_path / "artifact"))
    config = json.loads((tmp_path / "artifact" / "condense_config.json").read_text())
    _edit_json(
        tmp_path / "artifact" / "condense_config.json", lora={**config["lora"], "alpha": 8.0}
    )
    assert Condenser.from_pretrained(str(tmp_path / "artifact")).cfg.lora_alpha == 8
    _original_checkpoint(tiny_pair, tmp_path / "original")
    adapter = tmp_path / "original" / "adapter_config.json"
    _edit_json(adapter, lora_alpha=8.0)
    main(["import", str(tmp_path / "original"), "--out", str(tmp_path / "imported"),
          "--encoder", tiny_pair[0], "--decoder", tiny_pair[1]])  # fmt: skip
    assert read_config(tmp_path / "imported")["lora"]["alpha"] == 8


def test_an_evaluation_card_never_copies_what_a_link_out_of_the_artifact_points_to(
    tmp_path, capsys
):
    """A README.md linked to a private file had that file's text put into the card, a file
    of its own, which push then uploaded."""
    from condense.artifact import add_evaluation

    folder, secret = tmp_path / "art", tmp_path / "secret.txt"
    folder.mkdir()
    secret.write_text("ssh key material")
    (folder / "README.md").symlink_to(secret)
    add_evaluation(folder, "| a | b |", "condense eval")
    card = (folder / "README.md").read_text()
    assert "ssh key" not in card and "| a | b |" in card
    assert secret.read_text() == "ssh key material"
    assert "is a link out of the artifact" in capsys.readouterr().err
    # A link inside the artifact is the user's own card: it is read, and kept.
    (folder / "card.md").write_text("# My condenser\n")
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to("card.md")
    add_evaluation(folder, "| c |", "condense eval")
    assert (folder / "README.md").read_text().startswith("# My condenser\n\n## Evaluation")


def test_a_hub_artifact_downloads_only_the_files_that_load(tiny_pair, tmp_path, monkeypatch):
    """Its whole repo was downloaded: a checkpoint or data kept beside the artifact on the
    Hub (gigabytes) came with it. The stand-in downloads as the Hub's allow_patterns do."""
    import fnmatch

    import huggingface_hub

    repo, snapshot = tmp_path / "repo", tmp_path / "snapshot"
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg).save_pretrained(
        str(repo)
    )
    (repo / "last.ckpt").write_bytes(b"\0" * 1000)

    def download(repo_id, allow_patterns=None, **_):
        snapshot.mkdir(exist_ok=True)
        for file in repo.iterdir():
            if allow_patterns is None or any(fnmatch.fnmatch(file.name, p) for p in allow_patterns):
                shutil.copy(file, snapshot)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert Condenser.from_pretrained("me/condenser").num_condense_tokens == 4
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(ARTIFACT_FILES)


def test_a_full_disk_while_exporting_is_one_oserror_and_keeps_the_artifact(
    tiny_pair, tmp_path, monkeypatch
):
    """safetensors' "I/O error: No space left on device (os error 28)" named no file and
    was a traceback (a SafetensorError is no user error). The stand-in raises its text."""
    from safetensors import SafetensorError

    import condense.artifact
    from condense.artifact import save_artifact

    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg)
    out = save_artifact(condenser, tmp_path / "artifact")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*_):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(condense.artifact, "save_file", full)
    with pytest.raises(OSError) as err:
        save_artifact(condenser, out)
    assert str(err.value) == f"[Errno 28] No space left on device: '{out}'"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
