"""An embedded data set that needs no file and no network.

Each passage states facts no pretrained model can know (invented people, towns,
numbers and dates), so a decoder can only get them right through the condensed context.
One passage gives three samples: reconstruction, question answering, continuation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from condense.samples import Sample

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kl",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "w",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "m", "nd", "rk", "x"]
_JOBS = [
    "glassmaker",
    "clockmaker",
    "ferry pilot",
    "beekeeper",
    "cartographer",
    "weaver",
    "lighthouse keeper",
    "violin maker",
    "salt trader",
    "bookbinder",
    "tanner",
    "brewer",
]
_THINGS = ["goats", "books", "boats", "lanterns", "apple trees", "bells", "looms", "maps"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_COLOURS = ["red", "blue", "green", "yellow", "grey", "white", "black", "orange"]

RECONSTRUCTION, QUESTION_ANSWERING, CONTINUATION = (
    "reconstruction",
    "question_answering",
    "continuation",
)
TASKS = (RECONSTRUCTION, QUESTION_ANSWERING, CONTINUATION)
RECONSTRUCTION_PROMPT = "Repeat the passage above word for word.\n"
CONTINUATION_PROMPT = "Continue the passage.\n"


@dataclass(frozen=True)
class Fact:
    """One sentence of a passage, and a question whose exact answer it states."""

    sentence: str
    question: str
    answer: str


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _facts(rng: random.Random) -> list[Fact]:
    first, family = _word(rng, 2), _word(rng, 2)
    person = f"{first} {family}"
    town, river, street = (
        _word(rng, 2) + rng.choice(["holm", "by", "wick", "ford"]),
        _word(rng, 2),
        _word(rng, 2),
    )
    sibling = f"{_word(rng, 2)} {family}"
    year = rng.randint(1820, 1960)
    born = f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {year}"
    job, things, colour = rng.choice(_JOBS), rng.choice(_THINGS), rng.choice(_COLOURS)
    count, moved, age = rng.randint(3, 97), year + rng.randint(16, 60), rng.randint(61, 104)
    return [
        Fact(f"{person} was born on {born} in {town}.", f"When was {person} born?", born),
        Fact(
            f"{first} worked as a {job} on {street} Street.",
            f"On which street did {first} work?",
            f"{street} Street",
        ),
        Fact(
            f"The family kept {count} {things} beside the {river} river.",
            f"How many {things} did the family keep?",
            str(count),
        ),
        Fact(
            f"In {moved}, {first} moved across the {river} with {sibling}.",
            f"In which year did {first} move across the {river}?",
            str(moved),
        ),
        Fact(
            f"Their house had {_article(colour)} {colour} door and {rng.randint(2, 9)} windows.",
            f"What colour was the door of {first}'s house?",
            colour,
        ),
        Fact(
            f"{sibling} later became the mayor of {town}.",
            f"Who became the mayor of {town}?",
            sibling,
        ),
        Fact(f"{person} died at the age of {age}.", f"At what age did {person} die?", str(age)),
    ]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_passage(rng: random.Random, facts: Sequence[int] | None = None) -> list[Fact]:
    """Facts about one invented person, in their order. By default five to seven, birth
    first and death last; `facts=(lo, hi)` keeps lo to hi of the seven, chosen at random."""
    every = _facts(rng)
    if facts is None:
        return [every[0], *rng.sample(every[1:-1], rng.randint(3, 5)), every[-1]]
    keep = sorted(rng.sample(range(len(every)), rng.randint(*facts)))
    return [every[i] for i in keep]


def synthetic_samples(
    num_passages: int, seed: int = 0, facts: Sequence[int] | None = None
) -> list[Sample]:
    """`num_passages` passages (of `facts` facts, as in `make_passage`), three samples each,
    the same for the same seed. ValueError for a negative count or facts other than
    (lo, hi) with 1 <= lo <= hi <= 7, as DatasetConfig.synthetic_facts takes them."""
    if not isinstance(num_passages, int) or num_passages < 0:
        raise ValueError(f"num_passages must be 0 or more, got {num_passages!r}")
    if facts is not None and not (
        isinstance(facts, Sequence) and len(facts) == 2 and 1 <= facts[0] <= facts[1] <= 7
    ):
        raise ValueError(f"facts must be (lo, hi) with 1 <= lo <= hi <= 7, got {facts!r}")
    rng = random.Random(f"condense-synthetic-{seed}")
    samples: list[Sample] = []
    for index in range(num_passages):
        passage = make_passage(rng, facts)
        text = " ".join(f.sentence for f in passage)
        asked = rng.choice(passage)
        group = f"synthetic-{seed}-{index}"
        samples += [
            Sample(text, RECONSTRUCTION_PROMPT, text, RECONSTRUCTION, group),
            Sample(text, f"{asked.question}\n", asked.answer, QUESTION_ANSWERING, group),
        ]
        start, rest = _continuation(rng, passage)
        samples.append(Sample(start, CONTINUATION_PROMPT, rest, CONTINUATION, group))
    return samples


def _continuation(rng: random.Random, passage: list[Fact]) -> tuple[str, str]:
    """A passage cut in two: (the first part, the rest). Four facts or more keep two on
    each side of the cut, two or three are cut after the first half of them, and one is
    cut in the middle of its sentence."""
    if len(passage) == 1:
        words = passage[0].sentence.split()
        return " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])
    cut = rng.randint(2, len(passage) - 2) if len(passage) > 3 else len(passage) // 2
    return (
        " ".join(f.sentence for f in passage[:cut]),
        " ".join(f.sentence for f in passage[cut:]),
    )


def long_synthetic_samples(num_contexts: int, seed: int = 0, most: int = 6) -> list[Sample]:
    """`num_contexts` contexts of 1 to `most` passages (~80-110 tokens each, so ~100-512
    tokens in all, cut to max_tokens), three samples each with short targets (~20-130 prompt+completion
    tokens): a question on one passage, one passage repeated, the passage after a prefix.

    Shaped like the original trainer's data (long contexts, short targets), which the
    benchmark job (jobs/bench.yaml) needs; the short-context set above is for learning fast.
    """
    rng = random.Random(f"condense-synthetic-long-{seed}")
    samples: list[Sample] = []
    for index in range(num_contexts):
        passages = [make_passage(rng) for _ in range(rng.randint(1, most))]
        texts = [" ".join(f.sentence for f in p) for p in passages]
        which = rng.randrange(len(passages))
        asked = rng.choice(passages[which])
        group = f"synthetic-long-{seed}-{index}"
        context = " ".join(texts)
        ask = f"Answer from passage {which + 1} of the text above, in a few words. "
        repeat = f"Repeat passage {which + 1} of the text above word for word.\n"
        samples += [
            Sample(context, ask + asked.question + "\n", asked.answer, QUESTION_ANSWERING, group),
            Sample(context, repeat, texts[which], RECONSTRUCTION, group),
        ]
        if len(texts) > 1:
            cut = rng.randint(1, len(texts) - 1)
            prefix = " ".join(texts[:cut])
            samples.append(Sample(prefix, CONTINUATION_PROMPT, texts[cut], CONTINUATION, group))
    return samples
