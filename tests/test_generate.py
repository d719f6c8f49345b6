"""Generation from condensed embeddings: batched and masked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from condense.config import ConfigError, DatasetConfig, ModelConfig
from condense.data import tokenize
from condense.generate import generate
from condense.model import Condenser
from condense.samples import Sample
from condense.synthetic import synthetic_samples
from condense.weights import load_causal_lm, load_tokenizer


def _loaded(tiny_pair, tmp_path) -> Condenser:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg).save_pretrained(
        str(tmp_path / "art")
    )
    return Condenser.from_pretrained(str(tmp_path / "art"))


def test_a_batch_generates_what_each_row_generates_alone(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    samples = synthetic_samples(2, seed=31)
    contexts = [samples[0].context, samples[5].context]
    prompts = ["Repeat the passage above word for word.\n", "Who?\n"]  # different lengths: padded
    condensed = condenser.condense(contexts)
    both = generate(condenser, condensed, prompts, max_new_tokens=8)
    alone = [
        generate(condenser, condensed[i : i + 1], prompts[i : i + 1], max_new_tokens=8)[0]
        for i in range(2)
    ]
    assert both == alone
    assert all(isinstance(t, str) for t in both)


def test_each_row_stops_at_its_own_budget_as_it_would_alone(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    samples = synthetic_samples(2, seed=31)
    condensed = condenser.condense([samples[0].context, samples[5].context])
    prompts = ["Repeat the passage above word for word.\n", "Who?\n"]
    both = generate(condenser, condensed, prompts, max_new_tokens=[2, 8])
    alone = [
        generate(condenser, condensed[i : i + 1], prompts[i : i + 1], max_new_tokens=n)[0]
        for i, n in ((0, 2), (1, 8))
    ]
    assert both == alone
    uncut = generate(condenser, condensed[:1], prompts[:1], max_new_tokens=8)[0]
    assert uncut.startswith(both[0]) and len(uncut) > len(both[0])


def test_no_row_runs_past_the_decoders_positions(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)  # the tiny decoder reads 512 positions
    condensed = condenser.condense(["A short context."])
    prompt = "word " * 240
    width = 4 + len(condenser.decoder_tokenizer(prompt)["input_ids"])
    assert width < 512
    # Asked for 200 new tokens, it takes the room there is, instead of failing on position 512.
    asked = generate(condenser, condensed, [prompt], max_new_tokens=200)
    assert asked == generate(condenser, condensed, [prompt], max_new_tokens=512 - width)
    # Batched with a short row that has room for more: each still gives what it gives alone.
    short = "Who?\n"
    two = generate(
        condenser, condensed.expand(2, -1, -1), [short, prompt], max_new_tokens=[60, 200]
    )
    assert two == [
        generate(condenser, condensed, [short], max_new_tokens=60)[0],
        asked[0],
    ]
    assert two[0]
    with pytest.raises(ConfigError, match="no room to generate"):
        generate(condenser, condensed, ["word " * 300], max_new_tokens=8)


def test_decoding_is_greedy_whatever_the_decoders_generation_config_says(tiny_pair, tmp_path):
    """Chat decoders ship repetition penalties and the like in their generation_config;
    eval's exact match and ROUGE-L score the decoder's most likely answer, not those."""
    condenser = _loaded(tiny_pair, tmp_path)
    condensed = condenser.condense([synthetic_samples(1, seed=31)[0].context])
    plain = generate(condenser, condensed, ["Who?\n"], max_new_tokens=8)
    own = condenser.decoder.generation_config
    own.repetition_penalty, own.no_repeat_ngram_size, own.min_new_tokens = 100.0, 1, 8
    assert generate(condenser, condensed, ["Who?\n"], max_new_tokens=8) == plain
    assert condenser.decoder.generation_config is own  # given back as it was


def test_decoding_also_stops_at_the_decoders_own_stop_tokens(tiny_pair, tmp_path):
    """Llama-3-Instruct stops at <|eot_id|> and <|end_of_text|> alike (its generation_config
    lists both); stopping at the tokenizer's EOS alone ran past the other to the budget."""
    condenser = _loaded(tiny_pair, tmp_path)
    condensed = condenser.condense([synthetic_samples(1, seed=31)[0].context])
    prompt = ["Repeat the passage above word for word.\n"]
    plain = generate(condenser, condensed, prompt, max_new_tokens=8)[0]
    # Every token a stop token: the answer ends at its first.
    vocab = condenser.decoder.get_input_embeddings().num_embeddings
    condenser.decoder.generation_config.eos_token_id = list(range(vocab))
    first = generate(condenser, condensed, prompt, max_new_tokens=8)[0]
    assert plain.startswith(first) and len(first) < len(plain)


def test_budgets_must_be_one_per_prompt_and_positive(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    condensed = condenser.condense(["One.", "Two."])
    with pytest.raises(ValueError, match="1 budgets for 2 prompts"):
        generate(condenser, condensed, ["a\n", "b\n"], max_new_tokens=[3])
    with pytest.raises(ConfigError, match="max_new_tokens must be 1 or more, got 0"):
        generate(condenser, condensed, ["a\n", "b\n"], max_new_tokens=0)


def test_prompts_must_be_a_list_of_one_per_prefix(tiny_pair, tmp_path):
    """Two prefixes and one prompt gave one answer, three prompts two, and a bare string
    was read a character a prompt: answers silently missing or made up."""
    condenser = _loaded(tiny_pair, tmp_path)
    condensed = condenser.condense(["One.", "Two."])
    with pytest.raises(ValueError, match="2 prefixes for 1 prompts: give one each"):
        generate(condenser, condensed, ["a\n"], max_new_tokens=3)
    with pytest.raises(ValueError, match="2 prefixes for 3 prompts"):
        generate(condenser, condensed, ["a\n"] * 3, max_new_tokens=3)
    with pytest.raises(TypeError, match="not one string"):
        generate(condenser, condensed[:1], "a\n", max_new_tokens=3)
    assert generate(condenser, condensed[:0], [], max_new_tokens=3) == []


def test_a_prefix_of_the_wrong_shape_is_refused_by_its_shape(tiny_pair, tmp_path):
    """One context's (N, hidden) given as the batch was "4 prefixes for 1 prompts"."""
    condenser = _loaded(tiny_pair, tmp_path)
    condensed = condenser.condense(["One."])  # (1, 4, 48)
    with pytest.raises(ValueError, match=r"shape \(4, 48\): give \(batch, N, hidden\)"):
        generate(condenser, condensed[0], ["a\n"], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 48\): give a list of \(n, hidden\)"):
        generate(condenser, [condensed], ["a\n"], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 32\).*the decoder's 48"):
        generate(condenser, condensed[..., :32], ["a\n"], max_new_tokens=3)
    assert len(generate(condenser, list(condensed), ["a\n"], max_new_tokens=3)) == 1


def test_no_context_generation_takes_an_empty_condensed_prefix(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    empty = torch.zeros(2, 0, 48)
    assert len(generate(condenser, empty, ["a\n", "b c\n"], max_new_tokens=4)) == 2
    # Nothing at all to read (an empty prompt, no BOS): it starts from the BOS/EOS token.
    assert len(generate(condenser, empty, ["", "a\n"], max_new_tokens=4)) == 2
    assert len(generate(condenser, empty[:1], [""], max_new_tokens=4)) == 1


def _long_question() -> str:
    """A question after a history too long for a max_tokens of 24."""
    history = synthetic_samples(1, seed=5)[0].context
    return f"{history}\nWhere was Ka born?\n"


def test_a_too_long_prompt_is_read_as_training_read_it(tiny_pair, tmp_path, monkeypatch):
    condenser = _loaded(tiny_pair, tmp_path)
    condenser.max_context_tokens = 24  # the artifact's dataset.max_tokens
    encoder_tok, tok = condenser.encoder_tokenizer, condenser.decoder_tokenizer
    sample = Sample("Ka was born in Lo.", _long_question(), " Lo", "question_answering")
    target = len(tok(sample.completion)["input_ids"]) + 1  # and EOS
    (item,) = tokenize([sample], encoder_tok, tok, DatasetConfig(max_tokens=24))
    trained = item.input_ids[: 24 - target]  # what training kept of the prompt
    assert tok.decode(trained).endswith("\nWhere was Ka born?\n")
    read = []
    real = condenser.decoder.generate
    monkeypatch.setattr(
        condenser.decoder, "generate", lambda **kw: read.append(kw["inputs_embeds"]) or real(**kw)
    )
    condensed = condenser.condense([sample.context])
    # Generating as many tokens as the completion had, it reads the prompt training read.
    generate(condenser, condensed, [sample.prompt], max_new_tokens=target)
    embed = condenser.decoder.get_input_embeddings()
    assert torch.equal(read[0][0, 4:], embed(torch.tensor(trained)))


def test_a_prompt_is_generated_from_with_no_eos_its_tokenizer_closes_it_with(
    tiny_pair, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    condenser = _loaded(tiny_pair, tmp_path)
    # As a Llama tokenizer with add_eos_token: "<s> text </s>" for every text.
    tok = AutoTokenizer.from_pretrained(tiny_pair[1], add_bos_token=True, add_eos_token=True)
    condenser.decoder_tokenizer = tok
    sample = Sample("Ka was born in Lo.", "Where was Ka born?\n", " Lo", "question_answering")
    (item,) = tokenize([sample], condenser.encoder_tokenizer, tok, DatasetConfig(max_tokens=64))
    trained = item.input_ids[: -len(tok(" Lo", add_special_tokens=False)["input_ids"]) - 1]
    assert trained == [tok.bos_token_id, *tok(sample.prompt, add_special_tokens=False)["input_ids"]]
    read = []
    real = condenser.decoder.generate
    monkeypatch.setattr(
        condenser.decoder, "generate", lambda **kw: read.append(kw["inputs_embeds"]) or real(**kw)
    )
    generate(condenser, condenser.condense([sample.context]), [sample.prompt], max_new_tokens=3)
    embed = condenser.decoder.get_input_embeddings()
    assert torch.equal(read[0][0, 4:], embed(torch.tensor(trained)))


def test_generate_says_when_it_cuts_the_prompt(tiny_pair, tmp_path, capsys):
    from condense.__main__ import main

    _loaded(tiny_pair, tmp_path)
    Condenser.from_pretrained(str(tmp_path / "art")).save_pretrained(
        str(tmp_path / "cut"), max_tokens=24
    )
    (tmp_path / "context.txt").write_text("Ka was born in Lo.")
    length = len(load_tokenizer(tiny_pair[1])(_long_question())["input_ids"])
    argv = ["generate", "--artifact", str(tmp_path / "cut"), "--prompt", _long_question()]
    main([*argv, "--context-file", str(tmp_path / "context.txt"), "--max-new-tokens", "4"])
    assert (
        f"the prompt is cut to 20 of its {length} tokens, its end kept (dataset.max_tokens,"
        " with room for --max-new-tokens), as in training"
    ) in capsys.readouterr().err


def test_generate_says_when_the_decoders_positions_cut_the_budget(tiny_pair, tmp_path, capsys):
    # The tiny GPT-2 reads 512 positions: a budget past them stopped there without a word.
    from condense.__main__ import main

    condenser = _loaded(tiny_pair, tmp_path)
    (tmp_path / "context.txt").write_text("Ka was born in Lo.")
    prompt = "Where was Ka born?"
    read = len(load_tokenizer(tiny_pair[1])(prompt)["input_ids"])
    argv = ["generate", "--artifact", str(tmp_path / "art"), "--prompt", prompt]
    main([*argv, "--context-file", str(tmp_path / "context.txt"), "--max-new-tokens", "5000"])
    left = 512 - condenser.num_condense_tokens - read
    assert (
        f"at most {left} new tokens, not --max-new-tokens 5000: the decoder reads 512"
        " positions, and the condensed context and prompt fill the rest"
    ) in capsys.readouterr().err


def test_generate_command_prints_the_completion(tiny_pair, tmp_path):
    """The completion generate() gives for the artifact, the context and the prompt, and
    nothing else on stdout (notes go to stderr)."""
    loaded = _loaded(tiny_pair, tmp_path)
    context = synthetic_samples(1, seed=32)[0].context
    (tmp_path / "context.txt").write_text(context)
    expected = generate(loaded, loaded.condense([context]), ["Who?\n"], max_new_tokens=5)[0]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "condense",
            "generate",
            "--artifact",
            str(tmp_path / "art"),
            "--context-file",
            str(tmp_path / "context.txt"),
            "--prompt",
            "Who?\n",
            "--max-new-tokens",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout == expected + "\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_gpu_this_machine_lacks_is_one_line_before_anything_loads(
    command, tiny_pair, tmp_path, capsys
):
    from condense.__main__ import main

    _loaded(tiny_pair, tmp_path)
    (tmp_path / "context.txt").write_text("A passage.")
    capsys.readouterr()  # what making the artifact printed
    argv = [command, "--artifact", str(tmp_path / "art"), "--device", "cuda"]
    argv += (
        ["--context-file", str(tmp_path / "context.txt"), "--prompt", "Who?"]
        if command == "generate"
        else ["--out", str(tmp_path / "eval.json")]
    )
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["condense: error: --device cuda but torch sees 0 GPU(s) on this machine"]
    assert not (tmp_path / "eval.json").exists()


def test_loaded_in_bf16_it_condenses_and_generates_with_no_autocast_around(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    low = Condenser.from_pretrained(str(tmp_path / "art"), torch.bfloat16)
    assert low.decoder.dtype == torch.bfloat16 and low.projection.weight.dtype == torch.float32
    context = [synthetic_samples(1, seed=33)[0].context]
    exact, mixed = condenser.condense(context), low.condense(context)
    ids = torch.tensor([[1, 2, 3]])
    assert low.encode(ids, torch.ones_like(ids)).shape == (1, 4, 48)  # the lower-level entry
    assert mixed.shape == exact.shape
    assert (mixed.float() - exact).abs().max() < 0.1 * exact.abs().max()
    assert len(generate(low, mixed, ["Who?\n"], max_new_tokens=4)) == 1


def test_generate_reads_the_context_as_training_cut_it_and_says_so(tiny_pair, tmp_path, capsys):
    from condense.__main__ import main

    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg)
    condenser.save_pretrained(str(tmp_path / "art"), max_tokens=8, max_characters=60)
    loaded = Condenser.from_pretrained(str(tmp_path / "art"))
    long = " ".join(s.context for s in synthetic_samples(4, seed=32))
    assert len(long) > 60
    assert torch.equal(loaded.condense([long]), loaded.condense([long[:60]]))

    (tmp_path / "context.txt").write_text(long)
    argv = ["generate", "--artifact", str(tmp_path / "art"), "--prompt", "Who?\n"]
    main([*argv, "--context-file", str(tmp_path / "context.txt"), "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert (
        "the context is cut to its first 60 characters (dataset.max_characters), then to 8" in err
    )

    (tmp_path / "empty.txt").write_text("")
    main([*argv, "--context-file", str(tmp_path / "empty.txt"), "--max-new-tokens", "2"])
    assert "the condensed vectors of an empty text" in capsys.readouterr().err

    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(SystemExit) as stop:  # data, as a bad `eval --data` file: status 1
        main([*argv, "--context-file", str(tmp_path / "latin1.txt")])
    assert stop.value.code == 1
    said = f"--context-file {tmp_path / 'latin1.txt'}: not UTF-8 text (byte 3: invalid"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"condense: error: {said} continuation byte)"
    ]
    with pytest.raises(SystemExit) as stop:  # a missing file, as everywhere: status 1
        main([*argv, "--context-file", str(tmp_path / "nowhere.txt")])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"condense: error: --context-file {tmp_path / 'nowhere.txt'}: No such file or directory"
    )


def test_compiled_blocks_generate_eagerly_as_uncompiled_ones(tiny_pair, tmp_path, reset_dynamo):
    """With model.compile, generation must not recompile the blocks at every cache length
    (torch's limit of 8 and a warning: 47 s more on the test job's model) and must say the
    same."""
    condenser = _loaded(tiny_pair, tmp_path)
    samples = synthetic_samples(2, seed=31)
    condensed = condenser.condense([samples[0].context, samples[5].context])
    prompts = ["Repeat the passage above word for word.\n", "Who?\n"]
    eager = generate(condenser, condensed, prompts, max_new_tokens=6)
    condenser.compile_blocks()
    counters = reset_dynamo
    counters.clear()
    assert generate(condenser, condensed, prompts, max_new_tokens=6) == eager
    assert not counters["frames"]["total"], "generation compiled frames"
