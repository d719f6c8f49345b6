"""`condense eval`: every score between its floor and its ceiling.

For each sample the decoder is scored under four conditions:
    none       the prompt alone (the floor)
    wrong      another passage's condensed context (is the information specific?)
    condensed  its own condensed context
    full       its context as text, in the decoder's own tokenizer (the ceiling; cut to
               its last tokens where the decoder's positions cannot hold it, with a note)
and gap closed = (none - condensed) / (none - full) on loss. The condensed context's
margin over none and over wrong comes with its standard error across samples, so that a
margin smaller than the evaluation set can resolve reads as such.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.text import squad
from torchmetrics.functional.text.rouge import rouge_score
from tqdm import tqdm

from condense.batches import Collator, other_context
from condense.config import ConfigError, DatasetConfig
from condense.data import Tokenized, bos_added, is_synthetic, passage_id, tokenize
from condense.device import inference_device, load_for_inference
from condense.eval_data import (
    check_split,
    data_description,
    eval_samples,
    seen_context_note,
    trained_on_note,
)
from condense.files import json_out, write_json
from condense.generate import generate
from condense.model import IGNORE_INDEX, Condenser, token_embeddings
from condense.samples import DataReport, Sample
from condense.synthetic import CONTINUATION, QUESTION_ANSWERING, RECONSTRUCTION
from condense.weights import max_positions

CONDITIONS = ("none", "wrong", "condensed", "full")


def wrong_partners(samples: list[Sample]) -> list[int] | None:
    """For each sample, the next one (cyclically) from another passage, as validation picks
    them (batches.other_context); None when every sample is of one passage, so that none has
    another passage to read (a sample with none means all are of its passage)."""
    partner, found = other_context(torch.tensor([passage_id(s) for s in samples]))
    return partner.tolist() if bool(found.all()) else None


ONE_PASSAGE_NOTE = (
    "wrong: n/a, every sample is of one passage, so none has another passage's context to"
    " read; score samples of two passages or more to compare with it"
)


def one_passage_hint(data: str | None, limit: int | None) -> str:
    """How eval's user gets samples of two passages, where those scored are all of one."""
    if limit is not None:
        return " (a larger --limit)"
    if data is None:
        return " (the run's validation split holds one passage: give --data)"
    return f" (--data {data} holds one)"


FULL_CUT_NOTE = (
    "full: {cut} of {samples} samples' contexts were cut to their last tokens, to fit"
    " before the prompt and completion in the decoder's {limit} positions; the ceiling is"
    " lower there, and gap closed higher"
)


NO_GENERATION_NOTE = (
    "exact match and ROUGE-L: none for {tasks}, as they are scored for samples whose task"
    f" is {QUESTION_ANSWERING} or {RECONSTRUCTION}"
)


# The smallest span from none to full, as a share of none's loss, that gap closed divides
# by. Below it the full context barely helps, and a few hundredths of a nat in the condensed
# loss (the size of the margins this project's evaluation sets resolve) move the ratio by
# whole units: on the tiny random pair, spans of 0.03-0.5% read as 12.72 and -3.84.
MIN_SPAN_SHARE = 0.01


NO_SPAN_NOTE = (
    "gap closed: n/a where the full context's loss is not below no context's by two"
    f" standard errors and {MIN_SPAN_SHARE:.0%} (full_margin in the JSON): no span to"
    " divide by"
)


POSITIONS_CUT_NOTE = (
    "{contexts} of {samples} contexts and {targets} of their prompt+completions were cut to"
    " {limit} tokens, what the models' positions hold beside the {n} condensed vectors:"
    " this artifact records no max_tokens to cut them as its training did"
)


@torch.no_grad()
def evaluate(
    condenser: Condenser, samples: list[Sample], max_tokens: int | None, batch_size: int = 8
) -> dict[str, Any]:
    """Loss, token accuracy, QA exact match and reconstruction ROUGE-L per task and
    condition; see the module docstring for the conditions. Runs where the condenser is,
    `batch_size` samples at a time (a batch scores as its samples would one by one).
    Contexts, and prompts with their completions, are cut to `max_tokens` (the artifact's,
    as its training cut them); None: to what the models' positions hold (positions_limit),
    with a note where that cut any."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {batch_size}")
    with condenser.autocast():
        return _evaluate(condenser, samples, max_tokens, batch_size)


def positions_limit(condenser: Condenser) -> int:
    """The most tokens of a context, and of a prompt with its completion, that both models
    read beside the N condensed vectors, as training allows max_tokens (build.check_models);
    no limit (sys.maxsize) where neither model has a position table (Bloom's ALiBi, RWKV).
    condense() and generate() cut nothing where an artifact records no max_tokens: eval
    scores the same contexts, except past the positions, where a model fails or reads
    positions it has no embedding for."""
    encoder = condenser.encoder.get_base_model().config
    tables = [p for p in (max_positions(encoder), condenser.decoder_positions) if p is not None]
    return min(tables) - condenser.num_condense_tokens if tables else sys.maxsize


def _evaluate(
    condenser: Condenser, samples: list[Sample], recorded: int | None, batch_size: int
) -> dict[str, Any]:
    enc_tok, dec_tok = condenser.encoder_tokenizer, condenser.decoder_tokenizer
    max_tokens = recorded if recorded is not None else positions_limit(condenser)
    cuts = DataReport()
    tokenized = tokenize(samples, enc_tok, dec_tok, DatasetConfig(max_tokens=max_tokens), cuts)
    prompts = [_prompt_part(t) for t in tokenized]
    items = [_first_label_predictable(t) for t in tokenized]
    # The full context is the decoder reading the context's tokens before the prompt,
    # unlabelled. Where its tokenizer opens a text with BOS, the prompt's BOS moves in
    # front of the context: one BOS, first, as the decoder reads any text.
    bos = bos_added(dec_tok)
    context_ids = dec_tok(
        [s.context for s in samples],
        add_special_tokens=False,
        truncation=True,
        max_length=max_tokens,
    )["input_ids"]
    limit = condenser.decoder_positions
    context_ids, cut = _fit_full_context(context_ids, items, bos, limit)
    collate = Collator(enc_tok.pad_token_id or 0, dec_tok.pad_token_id or 0)
    device = condenser.device
    condensed = _condense_all(condenser, items, collate, batch_size)
    full_items = [
        replace(
            t,
            input_ids=ctx + t.input_ids[len(bos) :],
            labels=[IGNORE_INDEX] * len(ctx) + t.labels[len(bos) :],
        )
        for t, ctx in zip(items, context_ids)
    ]
    no_prefix = condensed.new_zeros(len(items), 0, condensed.shape[-1])
    # With no other passage to read, "wrong" is not scored at all (n/a): reading the
    # sample's own context instead would score a margin of 0, as if nothing were learned.
    partners = wrong_partners(samples)
    wrong = condensed[partners] if partners is not None else None
    scored = {
        "none": (items, no_prefix),
        "wrong": (items, wrong),
        "condensed": (items, condensed),
        "full": (full_items, no_prefix),
    }
    scored = {cond: rows for cond, rows in scored.items() if rows[1] is not None}
    per_sample = _score_all(condenser, samples, scored, collate, batch_size)
    report = {task: _task_scores(by_cond) for task, by_cond in per_sample.items()}
    prefixes = {
        "none": [c[:0] for c in condensed],
        "wrong": list(wrong) if wrong is not None else None,
        "condensed": list(condensed),
        "full": [
            token_embeddings(condenser.decoder, torch.tensor(ids, device=device))
            for ids in context_ids
        ],
    }
    # Answers follow the very prompt tokens that were scored, cut as training cut them; the
    # full context's tokens open with the BOS the prompt would add.
    after = dict.fromkeys(CONDITIONS, prompts) | {"full": [p[len(bos) :] for p in prompts]}
    examples = _generated_scores(condenser, samples, prefixes, after, report, batch_size)
    notes = [] if partners is not None else [ONE_PASSAGE_NOTE]
    if recorded is None:
        notes += _positions_cut_note(cuts, len(samples), max_tokens, condenser.num_condense_tokens)
    # A user's own task names: "qa" scored losses alone, silently.
    unnamed = sorted(set(report) - {QUESTION_ANSWERING, RECONSTRUCTION, CONTINUATION})
    if unnamed:
        notes.append(NO_GENERATION_NOTE.format(tasks=", ".join(unnamed)))
    if cut:
        notes.append(FULL_CUT_NOTE.format(cut=cut, samples=len(samples), limit=limit))
    if any(scores["gap_closed"] is None for scores in report.values()):
        notes.append(NO_SPAN_NOTE)
    return {"samples": len(samples), "by_task": report, "examples": examples, "notes": notes}


def _positions_cut_note(cuts: DataReport, samples: int, limit: int, n: int) -> list[str]:
    """POSITIONS_CUT_NOTE, where the cut to `limit` (positions_limit) cut anything."""
    contexts, targets = cuts.contexts_cut_to_max_tokens, cuts.targets_cut_to_max_tokens
    if not contexts + targets:
        return []
    counts = {"contexts": contexts, "targets": targets, "samples": samples}
    return [POSITIONS_CUT_NOTE.format(**counts, limit=limit, n=n)]


def _fit_full_context(
    context_ids: list[list[int]], items: list[Tokenized], bos: list[int], limit: int | None
) -> tuple[list[list[int]], int]:
    """Each item's full context (its context's decoder tokens after the BOS the prompt
    would open with), cut where the decoder's `limit` positions cannot hold it before the
    item's prompt and completion, and how many were cut.

    The context and the prompt+completion are each up to max_tokens long, and training
    checks only max_tokens + N against the decoder: GPT-2's 1024 positions, trained on at
    max_tokens 600, would be indexed past its position table by two 600-token halves. The
    cut keeps the context's last tokens, those next to the prompt, as a text too long for
    a window is read."""
    if limit is None:
        return [bos + ids for ids in context_ids], 0
    fitted, cut = [], 0
    for ids, item in zip(context_ids, items):
        room = max(limit - len(item.input_ids), 0)  # the item's BOS moves to the context
        if len(ids) > room:
            ids, cut = ids[len(ids) - room :], cut + 1
        fitted.append(bos + ids)
    return fitted, cut


def _prompt_part(item: Tokenized) -> list[int]:
    """The prompt's tokens of an item tokenized without `train_on_prompt`, as `tokenize`
    cut them: those before the first label."""
    first = next((i for i, label in enumerate(item.labels) if label != IGNORE_INDEX), None)
    return item.input_ids[:first]


def _first_label_predictable(item: Tokenized) -> Tokenized:
    """`item` with its first label dropped where it is the first token (an empty prompt
    and a decoder tokenizer that adds no BOS): read with no context, nothing comes before
    it to predict it from, so every condition scores the same tokens without it."""
    if item.labels and item.labels[0] != IGNORE_INDEX:
        return replace(item, labels=[IGNORE_INDEX, *item.labels[1:]])
    return item


def _condense_all(
    condenser: Condenser, items: list[Tokenized], collate: Collator, batch_size: int
) -> torch.Tensor:
    """The condensed context (len(items), N, Hd) of every item, `batch_size` at a time."""
    device = condenser.device
    condensed: list = [None] * len(items)
    chunks = _by_length([len(t.context_ids) for t in items], batch_size)
    for chunk in tqdm(chunks, desc="condense eval: condensing", unit="batch"):
        batch = collate([items[i] for i in chunk])
        out = condenser.encode(batch["context_ids"].to(device), batch["context_mask"].to(device))
        for i, row in zip(chunk, out):
            condensed[i] = row
    return torch.stack(condensed)


def _score_all(
    condenser: Condenser,
    samples: list[Sample],
    scored: dict[str, tuple[list[Tokenized], torch.Tensor]],
    collate: Collator,
    batch_size: int,
) -> dict[str, dict[str, list[tuple[float, int, int]]]]:
    """task -> condition -> per-sample (nll sum, correct tokens, tokens), in sample order,
    for conditions given as (rows, prefixes (len(rows), n, Hd))."""
    per_sample: dict = defaultdict(lambda: defaultdict(list))
    progress = tqdm(total=len(samples) * len(scored), desc="condense eval: scoring", unit="sample")
    for cond, (rows, prefixes) in scored.items():
        scores: list = [None] * len(rows)
        for chunk in _by_length([len(r.input_ids) for r in rows], batch_size):
            batch = collate([rows[i] for i in chunk])
            for i, score in zip(chunk, _score(condenser, prefixes[chunk], batch)):
                scores[i] = score
            progress.update(len(chunk))
        for sample, score in zip(samples, scores):
            per_sample[sample.task][cond].append(score)
    progress.close()
    return per_sample


def _by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of `batch_size`, of similar lengths: less padding to compute."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _score(
    condenser: Condenser, prefixes: torch.Tensor, batch: dict
) -> list[tuple[float, int, int]]:
    """(nll sum, correct tokens, tokens) of each row of a collated batch, read after
    `prefixes` (B, n, Hd). Rows are right-padded: the causal mask keeps each from its pads."""
    device = condenser.device
    labels = batch["labels"].to(device)
    logits, targets = condenser.decoder_logits(
        prefixes, batch["input_ids"].to(device), batch["attention_mask"].to(device), labels
    )
    # decoder_logits keeps, row by row, the positions that predict a label; with no prefix
    # the first token has no position before it, so its label cannot be predicted.
    predicted = labels if prefixes.shape[1] else labels[:, 1:]
    counts = (predicted != IGNORE_INDEX).sum(1).tolist()
    nll = F.cross_entropy(logits, targets, reduction="none").split(counts)
    correct = (logits.argmax(-1) == targets).split(counts)
    return [(n.sum().item(), c.sum().item(), k) for n, c, k in zip(nll, correct, counts)]


def _task_scores(by_cond: dict[str, list[tuple[float, int, int]]]) -> dict[str, Any]:
    """Per-token loss and accuracy per condition, gap closed (None where the span from
    none to full is not `resolved`), the full context's loss margin over none, and the
    condensed context's over none and wrong, from per-sample (nll sum, correct, tokens).
    A condition that was not scored (wrong, with no other passage) is None throughout."""
    nll = {c: [row[0] for row in by_cond[c]] for c in CONDITIONS if c in by_cond}
    tokens = [row[2] for row in by_cond["condensed"]]
    loss = {c: sum(nll[c]) / sum(tokens) if c in nll else None for c in CONDITIONS}
    span, span_stderr = paired_margin(nll["none"], nll["full"], tokens)
    gap = None
    if resolved(span, span_stderr, loss["none"]):
        gap = (loss["none"] - loss["condensed"]) / span
    margin = {}
    for other in ("none", "wrong"):
        value, stderr = (
            paired_margin(nll[other], nll["condensed"], tokens) if other in nll else (None, None)
        )
        margin[other] = {"loss": value, "stderr": stderr}
    accuracy = {
        c: sum(r[1] for r in by_cond[c]) / sum(tokens) if c in nll else None for c in CONDITIONS
    }
    return {
        # How much each score rests on: a task of 3 samples reads like one of 300.
        "samples": len(tokens),
        "target_tokens": sum(tokens),
        "loss": loss,
        "gap_closed": gap,
        "full_margin": {"loss": span, "stderr": span_stderr},
        "condensed_margin": margin,
        "token_accuracy": accuracy,
    }


def resolved(span: float, stderr: float | None, floor: float) -> bool:
    """Whether the full context's loss margin over no context (`span`, with its standard
    error) is one gap closed can divide by: more than two standard errors, so that this
    evaluation set can see it (with one sample there is no error, and nothing is
    resolved), and at least MIN_SPAN_SHARE of no context's loss `floor`."""
    return stderr is not None and span > max(2 * stderr, MIN_SPAN_SHARE * floor)


def paired_margin(
    nll_a: list[float], nll_b: list[float], tokens: list[int]
) -> tuple[float, float | None]:
    """Per-token loss of condition a minus that of b, both scored on the same samples
    (nll sums and token counts per sample), and its standard error across samples.

    The margin is a ratio of sums, sum(a_i - b_i) / sum(n_i), so its error is the
    ratio estimator's: the spread of the per-sample residuals (a_i - b_i) - margin * n_i.
    None with fewer than two samples. Written here because no library at hand gives the
    error of a ratio of sums; it is the textbook linearisation (delta method).
    """
    diffs = torch.tensor(nll_a, dtype=torch.float64) - torch.tensor(nll_b, dtype=torch.float64)
    counts = torch.tensor(tokens, dtype=torch.float64)
    margin = (diffs.sum() / counts.sum()).item()
    m = len(tokens)
    if m < 2:
        return margin, None
    residuals = diffs - margin * counts
    stderr = (residuals.pow(2).sum() * m / (m - 1)).sqrt() / counts.sum()
    return margin, stderr.item()


def generation_budget(tokenizer, reference: str) -> int:
    """New tokens a greedy answer or reconstruction may take: its reference's length in
    the decoder's tokens, plus as many again and 16 more, but at most 256 more. A right
    output is never cut by it (a 4000-token reconstruction gets 4256); a run-on one stops
    soon after the reference would have."""
    n = len(tokenizer(reference, add_special_tokens=False)["input_ids"])
    return n + min(n + 16, 256)


def _generated_scores(
    condenser, samples, prefixes, prompts, report, batch_size
) -> list[dict[str, str]]:
    """Greedy answers (QA exact match) and reconstructions (ROUGE-L), batched per condition,
    after each condition's prefixes and prompt token ids; None for a condition with no
    prefixes (wrong, with no other passage)."""
    examples = []
    for task, metric in ((QUESTION_ANSWERING, "exact_match"), (RECONSTRUCTION, "rougeL")):
        index = [i for i, s in enumerate(samples) if s.task == task]
        if not index:
            continue
        references = [samples[i].completion for i in index]
        budgets = [generation_budget(condenser.decoder_tokenizer, r) for r in references]
        report[task][metric] = {}
        for cond in tqdm(CONDITIONS, desc=f"condense eval: generating {task}", unit="condition"):
            if prefixes[cond] is None:
                report[task][metric][cond] = None
                continue
            outputs = []
            for start in range(0, len(index), batch_size):
                chunk = index[start : start + batch_size]
                outputs += generate(
                    condenser,
                    [prefixes[cond][i] for i in chunk],
                    [prompts[cond][i] for i in chunk],
                    budgets[start : start + batch_size],
                )
            report[task][metric][cond] = (
                exact_match(outputs, references)
                if metric == "exact_match"
                else rouge_l(outputs, references)
            )
            examples += [
                {
                    "task": task,
                    "condition": cond,
                    "prompt": samples[i].prompt,
                    "reference": ref,
                    "output": out,
                }
                for i, ref, out in list(zip(index, references, outputs))[:3]
            ]
    return examples


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after SQuAD normalisation
    (lower case, no punctuation, articles or extra spaces), from torchmetrics."""
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [
        {"answers": {"answer_start": [0], "text": [r]}, "id": str(i)}
        for i, r in enumerate(references)
    ]
    return squad(preds, target)["exact_match"].item() / 100


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of words), from torchmetrics."""
    return rouge_score(predictions, references, rouge_keys="rougeL")["rougeL_fmeasure"].item()


def markdown_table(results: dict[str, Any]) -> str:
    """One row per task and metric, one column per condition, gap closed, and on loss
    rows the condensed context's margin over the wrong one, +- its standard error; n/a
    where a condition was not scored, and the results' notes below the table."""
    lines = [
        "| task | metric | none | wrong | condensed | full | gap closed | wrong - condensed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, scores in sorted(results["by_task"].items()):
        # How many samples a row rests on: a task of 3 reads like one of 300 otherwise.
        if "samples" in scores:
            task = f"{task} ({scores['samples']})"
        for metric in ("loss", "token_accuracy", "exact_match", "rougeL"):
            if metric in scores:
                row = " | ".join(_value_text(scores[metric][c]) for c in CONDITIONS)
                gap = margin = ""
                if metric == "loss":
                    gap = "n/a" if scores["gap_closed"] is None else f"{scores['gap_closed']:.2f}"
                    margin = _margin_text(scores.get("condensed_margin", {}).get("wrong"))
                lines.append(f"| {task} | {metric} | {row} | {gap} | {margin} |")
    return "\n\n".join(["\n".join(lines), *results.get("notes", [])])


def _value_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _margin_text(margin: dict[str, Any] | None) -> str:
    if not margin:
        return ""
    if margin["loss"] is None:
        return "n/a"
    if margin["stderr"] is None:
        return f"{margin['loss']:+.3f}"
    return f"{margin['loss']:+.3f} +- {margin['stderr']:.3f}"


def plot(results: dict[str, Any], path: Path) -> None:
    """Bar chart of loss per task and condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(results["by_task"])
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(tasks), 4))
    width = 0.2
    for k, cond in enumerate(CONDITIONS):
        # A condition not scored (None) has no bar.
        losses = [results["by_task"][t]["loss"][cond] for t in tasks]
        values = [float("nan") if loss is None else loss for loss in losses]
        ax.bar([i + (k - 1.5) * width for i in range(len(tasks))], values, width, label=cond)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("decoder loss on the target (nats/token)")
    ax.set_title("condense eval: floor (none) to ceiling (full)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_beside(out: Path, data: str | None = None, make: bool = True) -> Path:
    """Where the plot of JSON results written to `out` goes (NAME.png beside it), with
    `out`'s folder made; a ConfigError for an `out` the results cannot go to, before an
    evaluation that would end there: a .png the plot would overwrite, or what
    files.json_out refuses (a folder, a path in an artifact or under a file, the `data`
    file itself). Without `make`, `out`'s folder is not made yet (see files.json_out)."""
    if out.suffix.lower() == ".png":
        raise ConfigError(
            f"--out {out}: give the JSON file's path (eval.json); the plot goes beside it"
        )
    json_out(out, "eval.json", [("--data", data)], make)
    return out.with_suffix(".png")


def run_eval(
    artifact: str,
    data: str | None,
    limit: int | None,
    out: Path,
    *,
    command: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 8,
    skip_bad_rows: bool = False,
    split: str = "train",
) -> dict[str, Any]:
    """Load an artifact, evaluate it (`data`'s `split`, where it has splits), write JSON
    and a PNG beside it, print the table, and put the table into a local artifact's model
    card (`command` is quoted there).
    `device` and `precision` as condense.device picks them ("auto": a GPU in bf16-mixed
    where there is one, else the CPU in fp32). A mistake in `out`, `device` or `data`
    stops before the models load; with `skip_bad_rows`, bad rows of `data` are skipped,
    and counted in the results' notes."""
    from condense.artifact import add_evaluation, local_folder, read_config

    check_split(data, split)
    # Without --data, the data it reads is known from the artifact's config: its folder
    # must not be made inside that data before that check.
    plot_path = plot_beside(out, data, make=data is not None)
    inference_device(device)
    # A Hub artifact's config comes from its download: without it, the validation split
    # and the fresh seed would be rebuilt from defaults, not from the run's settings.
    folder = local_folder(artifact)
    config = read_config(folder)
    if data is None:  # the run's own data: results written into its folder would join it
        trained = config.get("train_data")
        local = None if trained is None or is_synthetic(trained) else trained
        json_out(out, "eval.json", [("run's training-data", local)])
    report = DataReport()
    samples = eval_samples(config, data, limit, skip_bad_rows, report, split)
    condenser, where, precision = load_for_inference(str(folder), device, precision)
    results = {
        "artifact": artifact,
        "data": data_description(config, data, split),
        "device": str(where),
        "precision": precision,
    }
    results |= evaluate(condenser, samples, config.get("max_tokens"), batch_size)
    if report.rows_skipped:
        results["rows_skipped"] = report.rows_skipped
    notes = results["notes"]
    if ONE_PASSAGE_NOTE in notes:
        notes[notes.index(ONE_PASSAGE_NOTE)] += one_passage_hint(data, limit)
    seen = trained_on_note(config, data, split) or seen_context_note(config, data, samples)
    notes[:0] = report.reading_notes() + seen
    write_json(out, results)
    plot(results, plot_path)
    table = markdown_table(results)
    print(table)
    if Path(artifact).is_dir():
        try:
            add_evaluation(
                Path(artifact), table, command or "condense eval", f"{where}, precision {precision}"
            )
        except OSError as err:  # a read-only artifact: the results are written all the same
            print(
                f"condense: note: could not put the table into {Path(artifact) / 'README.md'}"
                f" ({err.strerror or err}); the results are in {out}",
                file=sys.stderr,
            )
    return results
