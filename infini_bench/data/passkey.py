"""Pass-key retrieval documents: a five-digit key hidden at a chosen depth in filler prose.

The needle and question follow the passkey test of Landmark Attention / Infini-attention:
    ... filler ... The pass key is 71432. Remember it. 71432 is the pass key. ... filler ...
    What is the pass key? The pass key is 71432
Filler sentences come from a pool tokenized once, so that haystacks of a million tokens are
built in seconds and their token counts are known without tokenizing them again.
"""

import random
from dataclasses import dataclass

from ..seeds import FILLER, PASSKEY_EVAL, stream_rng
from .embedded import filler_sentence

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
POOL_SIZE = 4096


@dataclass
class FillerPool:
    """Filler sentences (each with its leading space) and their token ids."""

    sentences: list[str]
    tokens: list[list[int]]

    @classmethod
    def build(cls, tokenizer, seed: int, split: str, size: int = POOL_SIZE) -> "FillerPool":
        """The pool of a split (training samples or evaluation haystacks), from the suite seed."""
        rng = stream_rng(seed, FILLER, split=split)
        sentences = [" " + filler_sentence(rng) for _ in range(size)]
        return cls(sentences, tokenizer(sentences, add_special_tokens=False)["input_ids"])

    def draw(self, rng: random.Random, num_tokens: int, at_most: bool = False) -> list[int]:
        """Indices of sentences drawn at random until they hold at least `num_tokens` tokens
        (`at_most`: the last one drawn is left out, so they hold at most `num_tokens`)."""
        picked, used = [], 0
        while used < num_tokens:
            i = rng.randrange(len(self.sentences))
            picked.append(i)
            used += len(self.tokens[i])
        return picked[:-1] if at_most and used > num_tokens else picked


def pass_key(rng: random.Random) -> str:
    return str(rng.randrange(10000, 100000))


def passkey_text(tokenizer, pool: FillerPool, length: int, depth: float, rng: random.Random) -> tuple[str, str]:
    """(context, key): the context ends with the question, the answer is " <key>"; context and
    answer together hold at most `length` tokens (a model whose context is `length` reads them
    whole), and the needle comes after `depth` percent of the filler."""
    key = pass_key(rng)
    needle = NEEDLE.format(key=key)
    budget = length - len(tokenizer(needle + QUESTION + " " + key, add_special_tokens=False)["input_ids"])
    picked = pool.draw(rng, budget, at_most=True)
    cut = round(len(picked) * depth / 100)
    before = "".join(pool.sentences[i] for i in picked[:cut])
    after = "".join(pool.sentences[i] for i in picked[cut:])
    # Every piece starts with a space, so with a byte-level BPE (GPT-NeoX's) the tokens of the
    # whole are the pieces' tokens, and the count is exact.
    return before + needle + after + QUESTION, key


def passkey_sample(tokenizer, pool: FillerPool, length: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """A training sample of exactly `length` tokens ending with question and answer, the needle
    at a random depth; returns (ids, flags) with flags 1 on the answer tokens."""
    key = pass_key(rng)
    needle = tokenizer(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
    question = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + key, add_special_tokens=False)["input_ids"]
    budget = length - len(needle) - len(question) - len(answer)
    if budget < 0:
        raise ValueError(f"data.sample_len: {length} tokens cannot hold a pass-key document "
                         f"(needs at least {length - budget})")
    pieces = [pool.tokens[i] for i in pool.draw(rng, budget)]
    cut = rng.randint(0, len(pieces))     # the needle goes between two filler sentences
    before, after = sum(pieces[:cut], []), sum(pieces[cut:], [])
    excess = len(before) + len(after) - budget
    before, after = (before[excess:], after) if len(before) >= excess else ([], after[excess - len(before):])
    ids = before + needle + after + question + answer
    return ids, [0] * (length - len(answer)) + [1] * len(answer)


def passkey_documents(tokenizer, length: int, depths, docs_per_depth: int, seed: int) -> list[dict]:
    """The evaluation documents of one length: {context, target, depth, length} for each depth
    and document; the same for the same tokenizer and suite seed (lm-eval tasks and the suite
    share them)."""
    pool = FillerPool.build(tokenizer, seed, "evaluation")
    rows = []
    for depth in depths:
        for k in range(docs_per_depth):
            rng = stream_rng(seed, PASSKEY_EVAL, length, f"{depth}-{k}")
            context, key = passkey_text(tokenizer, pool, length, depth, rng)
            rows.append({"context": context, "target": f" {key}", "depth": depth, "length": length})
    return rows
