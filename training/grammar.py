"""The domain: playing cards, digit strings and simple robot commands; its whole-word vocabulary.

Every piece is a whole word (`▁ten`, `▁of`, `▁clubs`, ...), as a SentencePiece model trained on this
text alone would make them; `<blk>` is last, as in NeMo exports.
"""

from __future__ import annotations

import random

BLANK = "<blk>"
RANKS = [
    "ace",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "jack",
    "queen",
    "king",
]
SUITS = ["clubs", "diamonds", "hearts", "spades"]
DIGITS = ["zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
UNITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MOTIONS = ["forward", "backward", "back", "left", "right"]
COMMAND_WORDS = [
    "go",
    "move",
    "turn",
    "stop",
    "around",
    "meters",
    "meter",
    "degrees",
    "and",
    "then",
    "a",
    "half",
]

WORDS = list(
    dict.fromkeys([*RANKS, "of", *SUITS, *DIGITS, *TEENS, *TENS, "hundred", *MOTIONS, *COMMAND_WORDS])
)
PIECES = [f"\u2581{w}" for w in WORDS] + [BLANK]


def number(value: int) -> str:
    """1..199 in words."""
    if value >= 100:
        rest = value - 100
        return "one hundred" + (f" {number(rest)}" if rest else "")
    if value < 10:
        return UNITS[value - 1]
    if value < 20:
        return TEENS[value - 10]
    tens, unit = divmod(value, 10)
    return TENS[tens - 2] + (f" {UNITS[unit - 1]}" if unit else "")


def card_sentence(rng: random.Random) -> str:
    items = []
    for _ in range(rng.choices([1, 2, 3, 4], [50, 25, 20, 5])[0]):
        rank = rng.choice(RANKS)
        if rng.random() < 0.2:  # a bare rank, as in "four queen of clubs" or "five five"
            items.append(rank)
        else:
            items.append(f"{rank} of {rng.choice(SUITS)}")
    return " ".join(items)


def digit_sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 7)))


def _distance(rng: random.Random) -> str:
    value = rng.choice([1, 2, 3, 4, 5, 10, 20, 50, rng.randint(1, 99), rng.randint(1, 99)])
    unit = "meter" if value == 1 and rng.random() < 0.8 else "meters"
    return f"{number(value)} {unit}"


def _command(rng: random.Random) -> str:
    kind = rng.choices(["go", "turn", "stop"], [55, 35, 10])[0]
    if kind == "go":
        verb = rng.choice(["go", "move"])
        return f"{verb} {rng.choice(MOTIONS)} {_distance(rng)}"
    if kind == "turn":
        if rng.random() < 0.15:
            return "turn around"
        angle = rng.choice([45, 90, 180, 30, 60, rng.randint(1, 199)])
        return f"turn {rng.choice(['left', 'right'])} {number(angle)} degrees"
    return "stop"


def command_sentence(rng: random.Random) -> str:
    first = _command(rng)
    if rng.random() < 0.2:
        return f"{first} {rng.choice(['and', 'then', 'and then'])} {_command(rng)}"
    return first


def sentence(rng: random.Random) -> str:
    """One sentence of the domain: cards 45 %, robot commands 30 %, digit strings 25 %."""
    kind = rng.choices([card_sentence, command_sentence, digit_sentence], [45, 30, 25])[0]
    return kind(rng)


def encode(text: str) -> list[int]:
    """Token ids of a sentence of the grammar."""
    index = {w: i for i, w in enumerate(WORDS)}
    return [index[w] for w in text.split()]


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids).replace("\u2581", " ").strip()
