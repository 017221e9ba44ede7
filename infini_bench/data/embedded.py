"""The embedded corpus: English-like documents with long-range structure, made from a seed.

Each document opens by stating facts about a few invented people (name, home town, an object
they keep, a number), continues with filler prose, and later refers back to those facts. The
later mentions are *recall spans*: invented names, towns and numbers cannot be guessed from
local context, only remembered from where they were first stated. Every document records the
character spans of its recall mentions so that tokens can be flagged for recall-token PPL.
"""

import random

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "qu", "r", "s", "st", "t",
          "th", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
CODAS = ["", "", "l", "n", "r", "s", "th", "x", "nd", "rk"]
# Invented words of the corpus start with one of these onsets, those of the reversal facts
# (data/reversal.py) with one of the others: their first letters differ, so no fact's name is
# ever a person or town of the corpus.
CORPUS_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m"]
FACT_ONSETS = [o for o in ONSETS if o not in CORPUS_ONSETS]
TOWN_SUFFIXES = ["moor", "ford", "wick", "dale", "haven", "gate", "holm", "field"]
PROFESSIONS = ["courier", "baker", "sailor", "teacher", "miner", "weaver", "doctor", "painter", "farmer",
               "clerk", "smith", "pilot", "singer", "judge", "tailor", "guard"]
MATERIALS = ["copper", "silver", "wooden", "glass", "iron", "clay", "stone", "golden", "woolen", "paper"]
OBJECTS = ["lantern", "compass", "flute", "ledger", "kettle", "mirror", "satchel", "ring", "clock", "map",
           "drum", "key"]

ADJECTIVES = ["quiet", "old", "small", "bright", "narrow", "cold", "busy", "green", "long", "gentle", "heavy",
              "distant", "empty", "warm", "steady"]
NOUNS = ["river", "road", "market", "garden", "bridge", "window", "field", "harbor", "forest", "tower", "wall",
         "train", "hill", "square", "house", "boat", "path", "wind", "rain", "street"]
VERBS = ["crossed", "passed", "followed", "reached", "watched", "left", "circled", "faced", "joined", "entered"]
TIMES = ["In the morning", "Later that day", "After a while", "Before noon", "At dusk", "Much later",
         "On the next day", "By evening"]


def _syllable(rng):
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def invented_word(rng, syllables=2, first_onsets=CORPUS_ONSETS):
    """A capitalised made-up word whose first syllable starts with one of `first_onsets`."""
    first = rng.choice(first_onsets) + rng.choice(VOWELS) + rng.choice(CODAS)
    return (first + "".join(_syllable(rng) for _ in range(syllables - 1))).capitalize()


def filler_sentence(rng):
    """One sentence of filler prose (no facts)."""
    a, b, c = rng.sample(NOUNS, 3)
    form = rng.randrange(3)
    if form == 0:
        return f"The {rng.choice(ADJECTIVES)} {a} {rng.choice(VERBS)} the {b} near the {c}."
    if form == 1:
        return f"{rng.choice(TIMES)}, the {a} was {rng.choice(ADJECTIVES)} and the {b} was {rng.choice(ADJECTIVES)}."
    return f"Nobody {rng.choice(VERBS)} the {a}, so the {b} stayed {rng.choice(ADJECTIVES)} by the {c}."


class _Document:
    """Builds text sentence by sentence and records the character spans of recall mentions."""

    def __init__(self):
        self.parts, self.length, self.words, self.recall = [], 0, 0, []

    def add(self, *pieces):
        """Append one sentence made of pieces: plain strings, or (text, True) for a recall mention."""
        if self.parts:
            self.parts.append(" ")
            self.length += 1
        for piece in pieces:
            text, recall = piece if isinstance(piece, tuple) else (piece, False)
            if recall:
                self.recall.append((self.length, self.length + len(text)))
            self.parts.append(text)
            self.length += len(text)
            self.words += len(text.split())

    def text(self):
        return "".join(self.parts)


def make_document(rng: random.Random, min_words: int = 300):
    """One document (text, recall character spans) of at least `min_words` words.

    Longer documents introduce more people and put more filler between recalls, so that
    recalls reach well beyond the opening statements (beyond a 64-token segment at 256 words)."""
    num_people = max(1, min(3, min_words // 80))
    filler_between = max(1, min(4, min_words // 64))
    people = []
    for _ in range(num_people):
        person = dict(first=invented_word(rng), last=invented_word(rng), town=invented_word(rng) + rng.choice(
            TOWN_SUFFIXES), job=rng.choice(PROFESSIONS), material=rng.choice(MATERIALS),
            object=rng.choice(OBJECTS), number=str(rng.randrange(1000, 10000)))
        people.append(person)
    doc = _Document()
    for p in people:
        doc.add(f"{p['first']} {p['last']} is a {p['job']} from {p['town']}.")
        doc.add(f"{p['first']} keeps a {p['material']} {p['object']} and the number {p['number']}.")
    while doc.words < min_words:
        for _ in range(filler_between):
            doc.add(filler_sentence(rng))
        p = rng.choice(people)
        name = (f"{p['first']} {p['last']}", True)
        form = rng.randrange(3)
        if form == 0:
            doc.add(f"{rng.choice(TIMES)}, ", name, " went back to ", (p["town"], True), " with the ",
                    (f"{p['material']} {p['object']}", True), ".")
        elif form == 1:
            doc.add("The number of ", name, " was ", (p["number"], True), ".")
        else:
            doc.add("The ", (p["job"], True), " from ", (p["town"], True), " was called ", name, ".")
    return doc.text(), doc.recall


def embedded_documents(num_documents: int, seed: int, min_words: int = 300):
    """`num_documents` documents as dicts {"text", "recall_spans"}, the same for the same seed
    (the caller derives it per stage and split: infini_bench/seeds.py)."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_documents):
        text, spans = make_document(rng, min_words=min_words)
        out.append({"text": text, "recall_spans": [list(s) for s in spans]})
    return out
