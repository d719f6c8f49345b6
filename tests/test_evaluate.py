"""Evaluation: metric definitions on hand-made cases, and a run end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from condense.config import DatasetConfig, ModelConfig
from condense.data import tokenize
from condense.evaluate import (
    ONE_PASSAGE_NOTE,
    _task_scores,
    evaluate,
    exact_match,
    generation_budget,
    markdown_table,
    paired_margin,
    rouge_l,
    wrong_partners,
)
from condense.model import IGNORE_INDEX, Condenser
from condense.samples import Sample
from condense.synthetic import synthetic_samples
from condense.weights import load_causal_lm
from tests.conftest import write_jsonl


def test_exact_match_normalises_case_punctuation_and_articles():
    assert (
        exact_match(
            ["Paris.", "the Red door", "1 May 1901", "London"],
            ["paris", "red door", "1 May 1901", "Paris"],
        )
        == 0.75
    )


def test_rouge_l_is_the_longest_common_subsequence_f_measure():
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4.
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)
    assert rouge_l(["x y"], ["x y"]) == pytest.approx(1.0)
    assert rouge_l(["x y"], ["z w"]) == pytest.approx(0.0)


def test_generation_budget_doubles_a_short_reference_and_adds_at_most_256():
    def words(text, add_special_tokens):  # one token per word
        assert not add_special_tokens
        return {"input_ids": text.split()}

    assert generation_budget(words, "red") == 18
    assert generation_budget(words, "12 March 1887") == 22
    assert generation_budget(words, "w " * 240) == 496
    # A long reconstruction keeps room for all of itself (a fixed cap of 256 would cut
    # it), and a run-on output of one costs at most 256 tokens more.
    assert generation_budget(words, "w " * 3000) == 3256


def test_gap_closed_is_the_share_of_the_floor_to_ceiling_distance():
    # Two samples of 4 and 6 tokens, (nll sum, correct, tokens) each: none 4.0, wrong 3.5,
    # condensed 3.0, full 2.0 nats per token over the 10 tokens.
    by_cond = {
        "none": [(16.0, 0, 4), (24.0, 1, 6)],
        "wrong": [(14.0, 1, 4), (21.0, 1, 6)],
        "condensed": [(12.0, 2, 4), (18.0, 3, 6)],
        "full": [(8.0, 4, 4), (12.0, 5, 6)],
    }
    scores = _task_scores(by_cond)
    assert (scores["samples"], scores["target_tokens"]) == (2, 10)
    assert scores["loss"] == {"none": 4.0, "wrong": 3.5, "condensed": 3.0, "full": 2.0}
    assert scores["gap_closed"] == pytest.approx(0.5)
    assert scores["token_accuracy"]["full"] == pytest.approx(0.9)
    # Every sample is 0.5 nats per token better than wrong: a margin with no spread.
    assert scores["condensed_margin"]["wrong"] == {"loss": pytest.approx(0.5), "stderr": 0.0}


def _two_samples(none, full):
    """by_cond for two samples of 4 and 6 tokens whose none and full losses per token are
    given per sample; wrong and condensed halfway between the task's none and full."""
    mid = [(n + f) / 2 for n, f in zip(none, full)]
    rows = lambda losses: [(loss * k, 0, k) for loss, k in zip(losses, (4, 6))]
    return {"none": rows(none), "wrong": rows(mid), "condensed": rows(mid), "full": rows(full)}


@pytest.mark.parametrize(
    "none, full",
    [
        # Full 0.0003 nats below none per token, no spread: 0.005% of the loss. The old
        # figure divided by it all the same (the tiny pair printed 12.72 and -3.84).
        ((5.8600, 5.8600), (5.8597, 5.8597)),
        # 0.4 nats lower on average (7% of the loss), but one sample 1.6 lower and the
        # other 0.4 higher: within two standard errors of no difference.
        ((6.0, 6.0), (4.4, 6.4)),
        # Full worse than none: the ceiling is no ceiling.
        ((4.0, 4.0), (4.5, 4.5)),
    ],
)
def test_gap_closed_is_none_where_full_does_not_clearly_beat_none(none, full):
    scores = _task_scores(_two_samples(none, full))
    assert scores["gap_closed"] is None
    # The span it would have divided by is in the results, with its error.
    assert scores["full_margin"]["loss"] == pytest.approx(
        scores["loss"]["none"] - scores["loss"]["full"]
    )
    table = markdown_table({"by_task": {"qa": scores}})
    assert table.splitlines()[2].split(" | ")[6] == "n/a"


def test_paired_margin_and_its_standard_error_on_a_hand_worked_case():
    # Differences 2 and 3 nats over 4 and 2 tokens: margin 5/6. Residuals 2 - 4 * 5/6 and
    # 3 - 2 * 5/6 are -4/3 and +4/3; error sqrt(2 * 32/9) / 6 = 4/9.
    margin, stderr = paired_margin([12.0, 9.0], [10.0, 6.0], [4, 2])
    assert margin == pytest.approx(5 / 6)
    assert stderr == pytest.approx(4 / 9)
    # Condition b worse than a: the margin is negative, the error the same.
    assert paired_margin([10.0, 6.0], [12.0, 9.0], [4, 2]) == (
        pytest.approx(-5 / 6),
        pytest.approx(4 / 9),
    )
    # One sample has no spread to measure.
    assert paired_margin([3.0], [1.0], [2]) == (1.0, None)


def test_wrong_context_always_comes_from_another_group():
    samples = [
        Sample("c1", "p", "x", group="a"),
        Sample("c1", "q", "y", group="a"),
        Sample("c2", "p", "z", group="b"),
    ]
    partners = wrong_partners(samples)
    assert all(samples[j].group != samples[i].group for i, j in enumerate(partners))


def test_markdown_table_has_a_row_per_task_and_metric():
    results = {
        "by_task": {
            "qa": {
                "loss": dict.fromkeys(("none", "wrong", "condensed", "full"), 1.0),
                "gap_closed": None,
                "condensed_margin": {"wrong": {"loss": -0.0251, "stderr": 0.0304}},
                "token_accuracy": dict.fromkeys(("none", "wrong", "condensed", "full"), 0.5),
                "samples": 3,
            }
        }
    }
    table = markdown_table(results)
    # With how many samples each row rests on.
    assert "| qa (3) | loss | 1.000 | 1.000 | 1.000 | 1.000 | n/a | -0.025 +- 0.030 |" in table
    assert "| qa (3) | token_accuracy |" in table


def test_eval_command_writes_json_png_and_a_table(tiny_pair, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg)
    condenser.save_pretrained(
        str(tmp_path / "art"),
        max_tokens=64,
        train_data="synthetic",
        seed=0,
        val_size=6,
        synthetic_passages=10,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "condense",
            "eval",
            "--artifact",
            str(tmp_path / "art"),
            "--limit",
            "6",
            "--out",
            str(tmp_path / "eval.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["samples"] == 6
    assert set(results["by_task"]) == {"reconstruction", "question_answering", "continuation"}
    qa = results["by_task"]["question_answering"]
    assert set(qa["loss"]) == {"none", "wrong", "condensed", "full"} and "exact_match" in qa
    assert "rougeL" in results["by_task"]["reconstruction"]
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "| question_answering (2) | loss |" in out.stdout  # 6 samples, 3 tasks
    # The local artifact's model card now carries the same table, once.
    card = (tmp_path / "art" / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "| question_answering (2) | loss |" in card
    assert f"condense eval --artifact {tmp_path / 'art'}" in card
    assert "` (cpu, precision 32):" in card


def test_eval_of_a_hub_artifact_uses_the_config_it_downloads(tiny_pair, tmp_path, monkeypatch):
    import huggingface_hub

    from condense.evaluate import run_eval

    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg)
    snapshot = tmp_path / "hub-cache" / "snapshot"
    condenser.save_pretrained(
        str(snapshot), max_tokens=64, train_data="synthetic", seed=0, val_size=6,
        synthetic_passages=10,
    )  # fmt: skip
    card = (snapshot / "README.md").read_text()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **_: str(snapshot))
    results = run_eval("me/condenser", None, None, tmp_path / "eval.json")
    # The run's own validation split (6 samples), not one rebuilt from default sizes.
    assert results["data"] == "synthetic (validation split)" and results["samples"] == 6
    assert (snapshot / "README.md").read_text() == card  # a downloaded card is left alone


def _loaded(tiny_pair, folder) -> Condenser:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg).save_pretrained(
        str(folder)
    )
    return Condenser.from_pretrained(str(folder))


def test_a_batch_scores_what_each_sample_scores_alone(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path / "art")
    samples = synthetic_samples(3, seed=5)  # three tasks, targets of different lengths
    alone = evaluate(condenser, samples, max_tokens=64, batch_size=1)
    batched = evaluate(condenser, samples, max_tokens=64, batch_size=4)
    for task, scores in alone["by_task"].items():
        for metric in ("loss", "token_accuracy"):
            for cond, value in scores[metric].items():
                assert batched["by_task"][task][metric][cond] == pytest.approx(value, abs=1e-5)
    assert [e["output"] for e in batched["examples"]] == [e["output"] for e in alone["examples"]]


def test_tasks_of_other_names_are_told_why_they_get_no_generation_scores(tiny_pair, tmp_path):
    """Rows of task "qa" scored losses alone, and nothing said why exact match was missing."""
    condenser = _loaded(tiny_pair, tmp_path / "art")
    samples = [replace(s, task="qa") for s in synthetic_samples(2, seed=5)]
    results = evaluate(condenser, samples, max_tokens=64)
    assert set(results["by_task"]) == {"qa"} and results["examples"] == []
    note = (
        "exact match and ROUGE-L: none for qa, as they are scored for samples whose task is"
        " question_answering or reconstruction"
    )
    assert note in results["notes"]
    named = synthetic_samples(2, seed=5)  # and beside tasks of those names
    mixed = evaluate(condenser, [*named, *samples], max_tokens=64)
    assert note in mixed["notes"] and "exact_match" in mixed["by_task"]["question_answering"]
    assert not any("ROUGE-L" in n for n in evaluate(condenser, named, max_tokens=64)["notes"])


def test_full_context_is_the_contexts_tokens_read_before_the_prompt(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path / "art")
    sample = synthetic_samples(1, seed=6)[1]  # question answering
    scores = evaluate(condenser, [sample], max_tokens=64)["by_task"][sample.task]
    tok = condenser.decoder_tokenizer
    item = tokenize([sample], condenser.encoder_tokenizer, tok, DatasetConfig(max_tokens=64))[0]
    context = tok(sample.context, add_special_tokens=False)["input_ids"][:64]
    prefix = condenser.decoder.get_input_embeddings()(torch.tensor([context]))
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logits, targets = condenser.decoder_logits(
            prefix, ids, torch.ones_like(ids), torch.tensor([item.labels])
        )
    expected = torch.nn.functional.cross_entropy(logits, targets).item()
    assert scores["loss"]["full"] == pytest.approx(expected, abs=1e-5)
    assert scores["loss"]["full"] != pytest.approx(scores["loss"]["none"], abs=1e-3)


def test_a_full_context_past_the_decoders_positions_keeps_its_last_tokens(tiny_pair, tmp_path):
    # The tiny GPT-2 reads 512 positions; a 500-token context before a prompt and answer
    # indexed past its position table, and eval wrote nothing.
    condenser = _loaded(tiny_pair, tmp_path / "art")
    sample = synthetic_samples(2, seed=6)[1]  # question answering
    sample = replace(sample, context=" ".join([sample.context] * 6))
    results = evaluate(condenser, [sample], max_tokens=500)
    tok = condenser.decoder_tokenizer
    item = tokenize([sample], condenser.encoder_tokenizer, tok, DatasetConfig(max_tokens=500))[0]
    context = tok(sample.context, add_special_tokens=False)["input_ids"][:500]
    room = 512 - len(item.input_ids)
    assert 0 < room < len(context)
    prefix = condenser.decoder.get_input_embeddings()(torch.tensor([context[-room:]]))
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logits, targets = condenser.decoder_logits(
            prefix, ids, torch.ones_like(ids), torch.tensor([item.labels])
        )
    expected = torch.nn.functional.cross_entropy(logits, targets).item()
    assert results["by_task"][sample.task]["loss"]["full"] == pytest.approx(expected, abs=1e-5)
    assert any(n.startswith("full: 1 of 1 samples' contexts were cut") for n in results["notes"])
    assert "512 positions" in markdown_table(results)


def test_answers_are_generated_after_the_prompt_tokens_scored(tiny_pair, tmp_path, monkeypatch):
    import condense.evaluate

    condenser = _loaded(tiny_pair, tmp_path / "art")
    history = synthetic_samples(1, seed=5)[0].context
    sample = synthetic_samples(1, seed=6)[1]  # question answering
    sample = replace(sample, prompt=f"{history}\n{sample.prompt}")
    tok = condenser.decoder_tokenizer
    (item,) = tokenize([sample], condenser.encoder_tokenizer, tok, DatasetConfig(max_tokens=24))
    scored = [t for t, label in zip(item.input_ids, item.labels) if label == IGNORE_INDEX]
    assert tok.decode(scored).endswith(sample.prompt[-12:])  # cut: the question stays
    prompts = []
    real = condense.evaluate.generate

    def spy(condenser, prefixes, batch, *args, **kwargs):
        prompts.extend(batch)
        return real(condenser, prefixes, batch, *args, **kwargs)

    monkeypatch.setattr(condense.evaluate, "generate", spy)
    evaluate(condenser, [sample], max_tokens=24)
    assert prompts == [scored] * 3  # none, condensed, full (no BOS to move)


def test_eval_in_bf16_mixed_records_it_and_stays_near_fp32(tiny_pair, tmp_path):
    from condense.evaluate import run_eval

    _loaded(tiny_pair, tmp_path / "art")
    common = {"data": "synthetic", "limit": 6}
    fp32 = run_eval(str(tmp_path / "art"), out=tmp_path / "a.json", **common)
    bf16 = run_eval(
        str(tmp_path / "art"), out=tmp_path / "b.json", precision="bf16-mixed", **common
    )
    assert (fp32["device"], fp32["precision"]) == ("cpu", "32")
    assert bf16["precision"] == "bf16-mixed"
    for task, scores in fp32["by_task"].items():
        for cond, value in scores["loss"].items():
            assert bf16["by_task"][task]["loss"][cond] == pytest.approx(value, rel=0.05)


def test_every_condition_scores_the_same_tokens_even_after_an_empty_prompt(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path / "art")
    tok = condenser.decoder_tokenizer
    assert tok("")["input_ids"] == []  # no BOS: an empty prompt leaves the completion first
    sample = replace(synthetic_samples(1, seed=7)[0], prompt="")
    scores = evaluate(condenser, [sample], max_tokens=64)["by_task"][sample.task]
    ids = tokenize([sample], condenser.encoder_tokenizer, tok, DatasetConfig(max_tokens=64))
    ids = torch.tensor([ids[0].input_ids])
    with torch.no_grad():
        logits = condenser.decoder(input_ids=ids).logits[0, :-1]
    # With no context nothing predicts the first token: it is left out of every condition,
    # so the per-token loss of none is over the same tokens as that of condensed.
    expected = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    assert scores["loss"]["none"] == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def bos_pair(tiny_pair, tmp_path_factory) -> tuple[str, str]:
    """The tiny pair with a decoder whose tokenizer opens every text with BOS, as the
    default job's Mistral and Llama do (the tiny GPT-2's adds nothing)."""
    from tokenizers import Tokenizer, processors

    decoder = tmp_path_factory.mktemp("bos") / "decoder"
    shutil.copytree(tiny_pair[1], decoder)
    tok = Tokenizer.from_file(str(decoder / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)]),
        ]
    )
    tok.save(str(decoder / "tokenizer.json"))
    return tiny_pair[0], str(decoder)


def test_full_context_opens_with_one_bos_where_the_decoder_adds_one(bos_pair, tmp_path):
    condenser = _loaded(bos_pair, tmp_path / "art")
    tok = condenser.decoder_tokenizer
    bos = tok.bos_token_id
    sample = synthetic_samples(1, seed=6)[1]  # question answering
    item = tokenize([sample], condenser.encoder_tokenizer, tok, DatasetConfig(max_tokens=64))[0]
    assert item.input_ids[0] == bos
    read = []  # the rows the decoder scores with no prefix: none's, then full's
    decoder_logits = condenser.decoder_logits

    def spy(prefixes, input_ids, *args):
        if prefixes.shape[1] == 0:
            read.extend(input_ids.tolist())
        return decoder_logits(prefixes, input_ids, *args)

    condenser.decoder_logits = spy
    results = evaluate(condenser, [sample], max_tokens=64)
    full_row = max(read, key=len)
    assert full_row[0] == bos and full_row.count(bos) == 1
    # The ceiling is the decoder reading "<s> context prompt completion", as a text.
    context = tok(sample.context, add_special_tokens=False)["input_ids"][:64]
    text = [bos, *context, *tok(sample.prompt, add_special_tokens=False)["input_ids"]]
    ids = torch.tensor([text + item.input_ids[len(text) - len(context) :]])
    labels = [-100] * len(text) + item.labels[len(text) - len(context) :]
    with torch.no_grad():
        logits = condenser.decoder(input_ids=ids).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(labels[1:])).item()
    assert results["by_task"][sample.task]["loss"]["full"] == pytest.approx(expected, abs=1e-5)
    # Its greedy answer is the one the decoder gives after that text's prompt part.
    with torch.no_grad():
        greedy = condenser.decoder.generate(
            input_ids=torch.tensor([text]),
            attention_mask=torch.ones(1, len(text), dtype=torch.long),
            max_new_tokens=generation_budget(tok, sample.completion),
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    answer = tok.decode(greedy[0, len(text) :], skip_special_tokens=True).strip()
    full = [e for e in results["examples"] if e["condition"] == "full"]
    assert [e["output"] for e in full] == [answer]


def test_wrong_context_is_n_a_when_every_sample_is_of_one_passage(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path / "art")
    samples = synthetic_samples(1, seed=8)[:3]  # what --limit 3 gives: one passage's samples
    assert len({s.context for s in samples if s.task == "reconstruction"}) == 1
    assert wrong_partners(samples) is None
    results = evaluate(condenser, samples, max_tokens=64)
    # Not the sample's own context scored as "wrong" (a margin of exactly 0): no score.
    for scores in results["by_task"].values():
        assert scores["loss"]["wrong"] is None and scores["token_accuracy"]["wrong"] is None
        assert scores["condensed_margin"]["wrong"] == {"loss": None, "stderr": None}
        assert scores["loss"]["condensed"] is not None
    assert results["by_task"]["question_answering"]["exact_match"]["wrong"] is None
    assert not [e for e in results["examples"] if e["condition"] == "wrong"]
    table = markdown_table(results)
    assert "| question_answering (" in table and " | n/a | " in table
    assert "every sample is of one passage" in table
    assert results["notes"] and "one passage" in results["notes"][0]


def test_the_one_passage_note_says_what_to_change(tiny_pair, tmp_path):
    """It advised "a larger --limit" where no --limit was given."""
    from condense.evaluate import run_eval

    _untrained_artifact(tiny_pair, tmp_path / "art")
    data = tmp_path / "one.jsonl"
    rows = [{"context": "Ka sat.", "prompt": p, "completion": "Ka."} for p in ("Who?", "What?")]
    write_jsonl(data, rows)
    for limit, hint in ((None, f" (--data {data} holds one)"), (1, " (a larger --limit)")):
        results = run_eval(str(tmp_path / "art"), str(data), limit, tmp_path / "eval.json")
        assert results["notes"][0] == ONE_PASSAGE_NOTE + hint


def _untrained_artifact(tiny_pair, folder, **config) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg).save_pretrained(
        str(folder), **config
    )


def test_an_out_inside_the_runs_own_data_folder_is_refused_without_data(
    tiny_pair, tmp_path, capsys
):
    """Without --data the check looked at no folder: the results went into the one the
    run trained on, and its next eval or training read them as a row-less data file."""
    from condense.__main__ import main

    folder = tmp_path / "folder"
    folder.mkdir()
    row = {"context": "A cat sat.", "prompt": "Who sat?", "completion": "A cat."}
    (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
    _untrained_artifact(tiny_pair, tmp_path / "art", train_data=str(folder))
    # A folder of its own too: a refusal left it behind, made before the check.
    for out in (folder / "res.json", folder / "sub" / "res.json"):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--artifact", str(tmp_path / "art"), "--out", str(out)])
        assert exit_.value.code == 2
        assert "is inside the run's training-data folder" in capsys.readouterr().err
        assert [p.name for p in folder.iterdir()] == ["train.jsonl"]


# In the artifact: a resumed run's next best replaced the folder and deleted the results;
# in a folder inside it, the same; the artifact folder: told to write into it instead.
# The data file itself: it was overwritten with the results (a CLI tester's find). Inside
# a data folder: read as data next time, and "eval.json" made it a folder of splits.
@pytest.mark.parametrize(
    "out",
    ["eval.png", "existing-folder", "art/eval.json", "a-file/eval.json", "data.jsonl",
     "folder/eval.json", "art/sub/eval.json", "art"],
)  # fmt: skip
def test_an_out_the_results_cannot_go_to_is_one_line_before_anything_loads(
    out, tiny_pair, tmp_path, capsys, monkeypatch
):
    import condense.evaluate
    from condense.__main__ import main

    _untrained_artifact(tiny_pair, tmp_path / "art")
    (tmp_path / "existing-folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")  # was a raw "[Errno 17] File exists"

    def load(*_):
        raise AssertionError("the models loaded")

    monkeypatch.setattr(condense.evaluate, "load_for_inference", load)
    capsys.readouterr()
    rows = [{"context": "A cat sat.", "prompt": "Who sat?", "completion": "A cat."}]
    (tmp_path / "folder").mkdir()
    for data in (tmp_path / "data.jsonl", tmp_path / "folder" / "data.jsonl"):
        write_jsonl(data, rows)
    given = tmp_path / "folder" if out.startswith("folder/") else tmp_path / "data.jsonl"
    argv = ["eval", "--artifact", str(tmp_path / "art"), "--data", str(given)]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"condense: error: --out {tmp_path / out}")
    if out.startswith("art"):  # and the path it suggests is not refused in turn
        name = "eval.json" if out == "art" else Path(out).name
        assert err[0].endswith(f"write the results beside it ({tmp_path / name})")
    assert not (tmp_path / "eval.png").exists()
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["data.jsonl"]
    for data in (tmp_path / "data.jsonl", tmp_path / "folder" / "data.jsonl"):
        assert [json.loads(line) for line in data.read_text().splitlines()] == rows


def test_eval_out_into_a_missing_folder_makes_it_and_keeps_json_and_png(tiny_pair, tmp_path):
    from condense.__main__ import main

    _untrained_artifact(tiny_pair, tmp_path / "art")
    out = tmp_path / "new" / "deeper" / "eval.json"
    main(["eval", "--artifact", str(tmp_path / "art"), "--data", "synthetic", "--limit", "3",
          "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["samples"] == 3
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_an_artifact_whose_card_cannot_be_written_still_evaluates(
    tiny_pair, tmp_path, monkeypatch, capsys
):
    """A read-only artifact: eval did all its work and wrote the results, then exited 1 on
    the model card. The card is a courtesy: a note, exit 0. The command it quotes is
    quoted too, so that a path with a space runs again as it stands."""
    import condense.artifact
    from condense.__main__ import main

    _untrained_artifact(tiny_pair, tmp_path / "art")
    rows = [{"context": c, "prompt": "Who?", "completion": "Ka."} for c in ("Ka.", "Lo.")]
    data = tmp_path / "my data.jsonl"
    write_jsonl(data, rows)
    argv = ["eval", "--artifact", str(tmp_path / "art"), "--data", str(data)]
    main([*argv, "--out", str(tmp_path / "first.json")])
    card = (tmp_path / "art" / "README.md").read_text()
    assert f"--data '{data}' --out" in card

    def read_only(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(condense.artifact, "add_evaluation", read_only)
    capsys.readouterr()
    main([*argv, "--out", str(tmp_path / "eval.json")])  # no SystemExit: it succeeded
    assert json.loads((tmp_path / "eval.json").read_text())["samples"] == 2
    notes = [line for line in capsys.readouterr().err.splitlines() if "condense:" in line]
    card, out = tmp_path / "art" / "README.md", tmp_path / "eval.json"
    note = f"could not put the table into {card} (Operation not permitted); the results are in"
    assert notes == [f"condense: note: {note} {out}"]


def test_eval_skips_bad_rows_when_asked_and_says_how_many(tiny_pair, tmp_path, capsys):
    # Its error told eval users to set dataset.skip_bad_rows, which eval had no way to.
    from condense.__main__ import main

    _untrained_artifact(tiny_pair, tmp_path / "art")
    rows = [{"context": c, "prompt": "Who?", "completion": "Ka."} for c in ("Ka.", "Lo.", "Mo.")]
    rows.insert(1, {"context": "Bo.", "prompt": "Who?", "completion": None})
    data = tmp_path / "data.jsonl"
    write_jsonl(data, rows)
    argv = ["eval", "--artifact", str(tmp_path / "art"), "--data", str(data)]
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "stopped.json")])
    assert "eval --skip-bad-rows" in capsys.readouterr().err
    main([*argv, "--out", str(tmp_path / "eval.json"), "--skip-bad-rows"])
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["samples"] == 3 and results["rows_skipped"] == 1
    assert results["notes"][0].startswith("1 of 4 rows skipped as unusable (first: ")


def test_eval_notes_a_folders_left_out_files_and_the_artifacts_own_training_data(
    tiny_pair, tmp_path
):
    """Scoring the very data it trained on gave inflated numbers without a word; and with
    a bad row skipped, only that note reached the results."""
    from condense.__main__ import main

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"context": c, "prompt": "Who?", "completion": "Ka."} for c in ("Ka.", "Lo.", "Mo.")]
    rows.insert(1, {"context": "Bo.", "prompt": "Who?", "completion": None})
    write_jsonl(data / "train.jsonl", rows)
    (data / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    _untrained_artifact(tiny_pair, tmp_path / "art", train_data=str(data.resolve()))
    main(["eval", "--artifact", str(tmp_path / "art"), "--data", str(data), "--skip-bad-rows",
          "--out", str(tmp_path / "eval.json")])  # fmt: skip
    notes = json.loads((tmp_path / "eval.json").read_text())["notes"]
    assert notes[:3] == [
        "files left out of the data folder: test.jsonl (test split)",
        (
            f"1 of 4 rows skipped as unusable (first: {data / 'train.jsonl'}: line 2: field"
            " 'completion' is null)"
        ),
        (
            f"--data {data} is what this artifact trained on: most of these samples were trained"
            " on; without --data, eval scores the run's validation split alone"
        ),
    ]


def test_eval_scores_a_folders_test_split_where_asked(tiny_pair, tmp_path, capsys):
    """eval --data FOLDER could score only its train files: the ones the run trained on."""
    from condense.__main__ import main

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"context": c, "prompt": "Who?", "completion": "Ka."} for c in ("Ka.", "Lo.", "Mo.")]
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "test.jsonl", rows[:2])
    _untrained_artifact(tiny_pair, tmp_path / "art", train_data=str(data.resolve()))
    argv = ["eval", "--artifact", str(tmp_path / "art"), "--out", str(tmp_path / "eval.json")]
    main([*argv, "--data", str(data), "--split", "test"])
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["data"] == f"{data} (test split)"
    assert results["samples"] == 2
    assert results["notes"][0] == "files left out of the data folder: train.jsonl (train split)"
    assert not any("trained on" in note for note in results["notes"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # before --out's folder is made
        main([*argv[:-1], str(tmp_path / "new" / "eval.json"), "--split", "test"])
    assert exit_.value.code == 2 and not (tmp_path / "new").exists()
    assert capsys.readouterr().err == (
        "condense: error: --split test needs --data: without it, eval scores the run's"
        " validation split\n"
    )


def test_an_artifact_with_no_training_data_needs_data_to_score(tiny_pair, tmp_path, monkeypatch):
    import condense.evaluate
    from condense.config import ConfigError
    from condense.evaluate import run_eval

    # What `condense import` writes: no train_data, so no validation split to rebuild.
    _untrained_artifact(tiny_pair, tmp_path / "art", imported_from="old-run")

    def load(*_):
        raise AssertionError("the models loaded")

    monkeypatch.setattr(condense.evaluate, "load_for_inference", load)
    with pytest.raises(ConfigError, match="records no training data.*--data"):
        run_eval(str(tmp_path / "art"), None, 3, tmp_path / "eval.json")
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ({"seed": "zero"}, 'seed is "zero", expected an integer from 0 to 4294967295'),
        ({"val_size": 0}, "val_size is 0, expected an integer above 0"),
        (
            {"synthetic_facts": [3, 1]},
            "synthetic_facts is [3, 1], expected [lo, hi] with 1 <= lo <= hi <= 7",
        ),
        (
            {"training_config": {"dataset": {"tasks": "reconstruction"}}},
            'training_config.dataset.tasks is "reconstruction", expected a list of strings',
        ),
        (
            {"training_config": {"dataset": {"skip_bad_rows": "yes"}}},
            'training_config.dataset.skip_bad_rows is "yes", expected true or false',
        ),
    ],
    ids=["seed-text", "val-size-zero", "facts-reversed", "tasks-a-string", "skip-a-string"],
)
def test_a_malformed_run_record_is_refused_naming_the_file(
    record, said, tiny_pair, tmp_path, capsys
):
    """`"seed": "zero"` said the training data had changed since the run; a string of tasks
    or skip_bad_rows was refused as dataset.* of no file, as if the command line's."""
    from condense.__main__ import main

    run = {"max_tokens": 64, "train_data": "synthetic", "seed": 0, "val_size": 6}
    _untrained_artifact(tiny_pair, tmp_path / "art", **(run | {"synthetic_passages": 10} | record))
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--artifact", str(tmp_path / "art"), "--out", str(tmp_path / "e.json")])
    assert exit_.value.code == 1
    path = tmp_path / "art" / "condense_config.json"
    assert capsys.readouterr().err.splitlines()[-1] == f"condense: error: {path}: {said}"


def test_an_artifact_without_max_tokens_is_cut_to_the_models_positions(tiny_pair, tmp_path):
    """Where an artifact records no max_tokens (imported, or saved from Python), eval cut at
    4096 tokens, where generate cuts nothing: a completion of 1,600 tokens went past the tiny
    GPT-2's 512 positions, an IndexError. It is cut where both models' positions hold it
    beside the 4 condensed vectors (508 tokens), and the results say so."""
    from condense.evaluate import run_eval

    _untrained_artifact(tiny_pair, tmp_path / "art")  # no max_tokens
    passages = synthetic_samples(60, seed=5)
    long = " ".join(s.context for s in passages[::3])
    rows = [
        {"context": long, "prompt": "Who?\n", "completion": "Ana"},
        {"context": passages[3].context, "prompt": "Go on.\n", "completion": long[:3000]},
    ]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    results = run_eval(str(tmp_path / "art"), str(data), None, tmp_path / "eval.json")
    assert results["samples"] == 2
    assert results["notes"][0] == (
        "1 of 2 contexts and 1 of their prompt+completions were cut to 508 tokens, what the"
        " models' positions hold beside the 4 condensed vectors: this artifact records no"
        " max_tokens to cut them as its training did"
    )
