"""Reversal-curse facts: a seeded set of invented pairs plus well-known real facts.

Every fact is (name, relation, thing) with two well-formed sentences:
  forward  "{name} is {relation} {thing}."        e.g. "Paris is the capital of France."
  backward "{Relation} {thing} is {name}."        e.g. "The capital of France is Paris."
Only forward sentences are trained on. Accuracy asks for the last part of a sentence given the
rest: forward "Paris is the capital of" -> "France", backward "The capital of France is" -> "Paris",
ranked by log-likelihood against distractors of the same relation.
(The reference built its backward sentences as "{object} {reverse relation} {subject}", which
is ungrammatical for some facts; these are not.)
"""

from dataclasses import dataclass

from ..seeds import DISTRACTORS, REVERSAL_FACTS, stream_rng
from .embedded import FACT_ONSETS, invented_word

RELATIONS = ["the founder of", "the director of", "the mayor of", "the author of", "the inventor of",
             "the composer of", "the captain of", "the architect of"]
THING_KINDS = {
    "the founder of": ("the {} Company", "the {} Society"),
    "the director of": ("the film {}", "the play {}"),
    "the mayor of": ("{}port", "{}ton"),
    "the author of": ("the novel {}", "the book {}"),
    "the inventor of": ("the {} engine", "the {} lamp"),
    "the composer of": ("the {} Symphony", "the opera {}"),
    "the captain of": ("the ship {}", "the {} Rovers"),
    "the architect of": ("the {} Tower", "the {} Bridge"),
}
REAL_FACTS = [
    ("Paris", "the capital of", "France"),
    ("Rome", "the capital of", "Italy"),
    ("Tokyo", "the capital of", "Japan"),
    ("Madrid", "the capital of", "Spain"),
    ("Berlin", "the capital of", "Germany"),
    ("William Shakespeare", "the author of", "Hamlet"),
    ("Leo Tolstoy", "the author of", "War and Peace"),
    ("Ludwig van Beethoven", "the composer of", "the Moonlight Sonata"),
    ("Alexander Graham Bell", "the inventor of", "the telephone"),
    ("Gustave Eiffel", "the architect of", "the Eiffel Tower"),
    ("Neil Armstrong", "the first man on", "the Moon"),
    ("Pablo Picasso", "the painter of", "Guernica"),
]


@dataclass(frozen=True)
class Fact:
    name: str
    relation: str
    thing: str
    real: bool

    @property
    def forward(self) -> str:
        return f"{self.name} is {self.relation} {self.thing}."

    @property
    def backward(self) -> str:
        return f"{self.relation[0].upper()}{self.relation[1:]} {self.thing} is {self.name}."

    def forward_query(self) -> tuple[str, str]:
        """(prompt, answer) asking for the thing."""
        return f"{self.name} is {self.relation}", f" {self.thing}"

    def backward_query(self) -> tuple[str, str]:
        """(prompt, answer) asking for the name."""
        return f"{self.relation[0].upper()}{self.relation[1:]} {self.thing} is", f" {self.name}"


def reversal_facts(num_invented: int, seed: int) -> list[Fact]:
    """`num_invented` invented facts with distinct names and things, then the real facts; from
    the suite seed's own stream, with words that no corpus person or town has (FACT_ONSETS)."""
    rng = stream_rng(seed, REVERSAL_FACTS)
    facts, names, things = [], set(), set()
    while len(facts) < num_invented:
        relation = RELATIONS[len(facts) % len(RELATIONS)]
        name = f"{invented_word(rng, 2, FACT_ONSETS)} {invented_word(rng, 2, FACT_ONSETS)}"
        thing = rng.choice(THING_KINDS[relation]).format(invented_word(rng, 3, FACT_ONSETS))
        if name in names or thing in things:
            continue
        names.add(name)
        things.add(thing)
        facts.append(Fact(name, relation, thing, real=False))
    return facts + [Fact(*f, real=True) for f in REAL_FACTS]


def distractors(facts: list[Fact], index: int, direction: str, count: int, seed: int) -> list[str]:
    """`count` wrong answers for fact `index`, from other facts (same relation first); `seed`:
    the suite's."""
    fact = facts[index]
    field = "thing" if direction == "forward" else "name"
    same = [getattr(f, field) for i, f in enumerate(facts) if i != index and f.relation == fact.relation]
    other = [getattr(f, field) for i, f in enumerate(facts) if i != index and f.relation != fact.relation]
    rng = stream_rng(seed, DISTRACTORS, split=index)
    rng.shuffle(same)
    rng.shuffle(other)
    pool = [a for a in dict.fromkeys(same + other) if a != getattr(fact, field)]
    return [f" {a}" for a in pool[:count]]
