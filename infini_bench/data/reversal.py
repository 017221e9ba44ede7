"""Reversal-curse facts: trained facts and control facts, invented from the suite seed.

Every fact is (name, relation, thing) with two well-formed sentences, each with a leading space:
  forward  " {name} is {relation} {thing}."      e.g. " Tavo Quilen is the author of the novel Serath."
  backward " {Relation} {thing} is {name}."      e.g. " The author of the novel Serath is Tavo Quilen."
Only the trained facts' forward sentences are trained on, each after an EOS token; the control
facts are made the same way from a stream of their own and never trained. A question asks for
the last part of a sentence after EOS and the rest of it: forward " Tavo Quilen is the author
of" -> " the novel Serath", backward " The author of the novel Serath is" -> " Tavo Quilen".
The leading space makes a name or thing the same tokens in a training sentence and in either
answer (a byte-level BPE starts a word at its space; tested).

The answer is ranked by summed log-probability against distractors of its own type: the
answers to the same question of other facts of the same relation and the same set (trained or
control). Answer and distractors are then draws from one distribution, so a model that knows
nothing about the fact ranks the answer first with probability 1 / (distractors + 1) exactly
(tested on a random model).
(The reference built its backward sentences as "{object} {reverse relation} {subject}", which
is ungrammatical for some facts, and mixed real facts whose relations have no distractors of
their type; these facts are all invented, as nothing is pretrained here.)
"""

from dataclasses import dataclass

from ..seeds import DISTRACTORS, REVERSAL_FACTS, stream_rng
from .embedded import FACT_ONSETS, invented_word

# relation -> the template of its things (every thing of a relation has the same frame words)
RELATIONS = {
    "the author of": "the novel {}",
    "the founder of": "the {} Company",
    "the architect of": "the {} Bridge",
    "the composer of": "the {} Symphony",
    "the director of": "the film {}",
    "the inventor of": "the {} engine",
    "the captain of": "the ship {}",
    "the mayor of": "{}port",
}
FACT_SETS = ("trained", "control")


@dataclass(frozen=True)
class Fact:
    name: str
    relation: str
    thing: str

    @property
    def forward(self) -> str:
        return f" {self.name} is {self.relation} {self.thing}."

    @property
    def backward(self) -> str:
        return f" {self.relation[0].upper()}{self.relation[1:]} {self.thing} is {self.name}."

    def query(self, direction: str) -> tuple[str, str]:
        """(prompt, answer): forward asks for the thing, backward for the name."""
        if direction == "forward":
            return f" {self.name} is {self.relation}", f" {self.thing}"
        return f" {self.relation[0].upper()}{self.relation[1:]} {self.thing} is", f" {self.name}"

    def answer(self, direction: str) -> str:
        return self.thing if direction == "forward" else self.name


def reversal_facts(count: int, relations: int, seed: int) -> dict[str, list[Fact]]:
    """{"trained": facts, "control": facts}: `count` each, spread in turn over the first
    `relations` relations, with distinct names and things across both sets; each set from its
    own stream of the suite seed, with words no corpus person or town has (FACT_ONSETS)."""
    names, things, out = set(), set(), {}
    for which in FACT_SETS:
        rng, facts = stream_rng(seed, REVERSAL_FACTS, split=which), []
        while len(facts) < count:
            relation = list(RELATIONS)[len(facts) % relations]
            name = f"{invented_word(rng, 2, FACT_ONSETS)} {invented_word(rng, 2, FACT_ONSETS)}"
            thing = RELATIONS[relation].format(invented_word(rng, 3, FACT_ONSETS))
            if name in names or thing in things:
                continue
            names.add(name)
            things.add(thing)
            facts.append(Fact(name, relation, thing))
        out[which] = facts
    return out


def distractor_facts(facts: list[Fact], index: int, count: int, seed: int, which: str) -> list[int]:
    """Indices of `count` other facts of fact `index`'s relation in the set `which` (trained or
    control), in an order drawn from the suite seed's stream; their answers are its distractors."""
    fact = facts[index]
    pool = [i for i, f in enumerate(facts) if i != index and f.relation == fact.relation]
    if len(pool) < count:
        raise ValueError(f"data.reversal_facts: {fact.relation!r} has {len(pool) + 1} facts, "
                         f"{count} distractors need {count + 1}")
    stream_rng(seed, DISTRACTORS, stage=which, split=index).shuffle(pool)
    return pool[:count]


def reversal_questions(facts: list[Fact], direction: str, num_distractors: int, seed: int, which: str,
                       eos: str) -> list[dict]:
    """Each fact's question: {"prompt", "choices", "facts"}: the prompt after `eos` as every
    trained sentence is, the answers of the fact and its distractor facts (the answer first) and
    those facts' indices; the reversal metrics and the lm-eval tasks ask these."""
    rows = []
    for i, fact in enumerate(facts):
        prompt, _ = fact.query(direction)
        candidates = [i] + distractor_facts(facts, i, num_distractors, seed, which)
        rows.append({"prompt": eos + prompt, "choices": [f" {facts[j].answer(direction)}" for j in candidates],
                     "facts": candidates})
    return rows
