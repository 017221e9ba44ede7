"""Needle-in-a-haystack documents of the RULER task families, generated offline.

Families (RULER, Hsieh et al. 2024, at the sizes a CPU-trained model can learn):
  single      one pass key; asked for it                      (Landmark / Infini-attention pass key)
  multikey    several named pass keys; asked for one of them  (the others are distractors)
  multivalue  one name with several pass keys; all are asked, in the order they were stated
  multiquery  several named pass keys; two are asked in one question
  vt          variable tracking: VAR A = 12345 ... VAR B = A ...; every name bound to the value is asked
Haystacks:
  filler      the training filler (data/embedded.py) with five-digit distractor numbers in it
  prose       embedded-corpus documents (people, towns, numbers), never a training haystack
  heldout     weather-log text of a kind never in any training sample (words the tokenizer never saw):
              a score here says whether retrieval generalises beyond the training haystack
The needle(s) the answer depends on end at least `gap` tokens before the question (two
segments: local attention cannot see them); depth d places the asked needle after d% of the
haystack that lies before that limit. The keyed families' needles (multikey, multiquery) form
one block in random order at that depth, so that no position (first key, last key) gives the
answer away; the other families' later needles follow the first up to the limit. Depth LOCAL (the old depth 100%) puts the needles right
before the question: a control that needs no memory, never averaged into a memory score.
Every piece of text starts with a space, so with a byte-level BPE the tokens of a document are
its pieces' tokens and lengths and distances are exact without tokenizing a million tokens (a
pool refuses a tokenizer for which that does not hold).
"""

import random
from dataclasses import dataclass

from ..config import FAMILIES, HAYSTACKS, LOCAL
from ..seeds import FILLER, NEEDLE_EVAL, NEEDLE_SELECT, stream_rng
from .embedded import ADJECTIVES, NOUNS, filler_sentence, invented_word, make_document

TRAINING_HAYSTACK = "filler"
POOL_SIZE = 4096
NUM_KEYS = 4          # needles of multikey / multiquery
NUM_VALUES = 3        # values of multivalue
NUM_HOPS = 3          # names bound to the value in vt (the first binds the number)
DISTRACTOR_SHARE = 8  # one filler sentence in this many carries a five-digit distractor number

SINGLE_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
SINGLE_QUESTION = " What is the pass key? The pass key is"
KEYED_NEEDLE = " The pass key of {name} is {key}."
KEYED_QUESTION = " What is the pass key of {name}? The pass key of {name} is"
VALUE_NEEDLE = " One pass key of {name} is {key}."
VALUES_QUESTION = " What are all the pass keys of {name}? The pass keys of {name} are"
QUERY_QUESTION = " What are the pass keys of {a} and {b}? The pass keys of {a} and {b} are"
VT_BIND = " VAR {name} = {value}."
VT_QUESTION = " Which variables are assigned the value {key}? They are"
NUMBER_SENTENCES = (" The {adjective} {noun} was number {number}.", " The door code of the {noun} is {number}.",
                    " Room {number} faced the {noun}.")
WINDS = ["north", "south", "east", "west", "northeast", "southwest"]
SKIES = ["overcast", "clear", "hazy", "drizzling", "foggy", "squally"]


def _number_sentence(rng) -> str:
    return rng.choice(NUMBER_SENTENCES).format(adjective=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS),
                                               number=rng.randrange(10000, 100000))


def _heldout_sentence(rng, distractor: bool) -> str:
    log = rng.randrange(10000, 100000) if distractor else rng.randrange(100, 1000)
    return (f" Log {log}: gusts {rng.choice(WINDS)} at {rng.randrange(2, 60)} knots, "
            f"sky {rng.choice(SKIES)}, barometer {rng.randrange(960, 1050)}.")


def _prose_sentences(rng, count) -> list[str]:
    out = []
    while len(out) < count:
        text, _ = make_document(rng, min_words=300)
        out += [" " + s.strip() + ("" if s.endswith(".") else ".") for s in text.split(". ") if s.strip()]
    return out[:count]


def haystack_sentences(haystack: str, rng, count: int) -> list[str]:
    """`count` sentences of a haystack kind, each with its leading space; one in DISTRACTOR_SHARE
    of every kind holds a five-digit distractor number (a number sentence in the filler and the
    prose, a five-digit log number in the weather log)."""
    if haystack == "filler":
        return [_number_sentence(rng) if rng.randrange(DISTRACTOR_SHARE) == 0 else " " + filler_sentence(rng)
                for _ in range(count)]
    if haystack == "prose":
        return [_number_sentence(rng) if rng.randrange(DISTRACTOR_SHARE) == 0 else sentence
                for sentence in _prose_sentences(rng, count)]
    if haystack == "heldout":
        return [_heldout_sentence(rng, rng.randrange(DISTRACTOR_SHARE) == 0) for _ in range(count)]
    raise ValueError(f"haystack: unknown {haystack!r}; accepted: {', '.join(HAYSTACKS)}")


def check_tokenizer(tokenizer, sentences):
    """Documents are counted piece by piece: each pair of pieces must tokenize as its parts do."""
    for a, b in zip(sentences[:64:2], sentences[1:64:2]):
        if _encode(tokenizer, a + b) != _encode(tokenizer, a) + _encode(tokenizer, b):
            raise ValueError(f"tokenizer: {getattr(tokenizer, 'name_or_path', '') or 'this tokenizer'} does not "
                             f"tokenize space-led pieces independently (not a byte-level BPE), so needle distances "
                             f"cannot be counted exactly; accepted: byte-level BPE tokenizers such as GPT-NeoX's")


@dataclass
class SentencePool:
    """Haystack sentences and their token ids, tokenized once (a 1M-token haystack is built in
    seconds), and every five-digit number they hold (a key never equals one)."""

    sentences: list[str]
    tokens: list[list[int]]
    numbers: frozenset

    @classmethod
    def build(cls, tokenizer, seed: int, split: str, haystack: str = TRAINING_HAYSTACK,
              size: int = POOL_SIZE) -> "SentencePool":
        """The pool of a split (training samples or evaluation haystacks) and haystack kind."""
        if haystack != TRAINING_HAYSTACK and split != "evaluation":
            raise ValueError(f"haystack: {haystack!r} is an evaluation haystack; training uses {TRAINING_HAYSTACK!r}")
        stage = None if haystack == TRAINING_HAYSTACK else haystack  # the filler pools' streams are the old ones
        sentences = haystack_sentences(haystack, stream_rng(seed, FILLER, stage, split), size)
        numbers = frozenset(w.strip(".,:") for s in sentences for w in s.split() if w.strip(".,:").isdigit()
                            and len(w.strip(".,:")) == 5)
        check_tokenizer(tokenizer, sentences)
        return cls(sentences, tokenizer(sentences, add_special_tokens=False)["input_ids"], numbers)

    def draw(self, rng: random.Random, num_tokens: int) -> list[int]:
        """Indices of sentences drawn at random while they hold at most `num_tokens` tokens."""
        picked, used, count, tokens = [], 0, len(self.sentences), self.tokens
        below = rng._randbelow  # what randrange(count) returns, without its argument checks (1M-token haystacks)
        while True:
            i = below(count)
            if used + len(tokens[i]) > num_tokens:
                return picked
            picked.append(i)
            used += len(tokens[i])


@dataclass
class Needles:
    """One document's needles, question and answer: `asked` needles are the ones the answer
    depends on (the first is placed at the depth, the others after it, in order), `others`
    are distractor needles placed anywhere before the limit; `block`: all of them in one block
    in random order at the depth instead."""

    asked: list[str]
    others: list[str]
    question: str
    answer: str
    block: bool = False


def _keys(rng, count, avoid) -> list[str]:
    keys = []
    while len(keys) < count:
        key = str(rng.randrange(10000, 100000))
        if key not in avoid and key not in keys:
            keys.append(key)
    return keys


def _names(rng, count) -> list[str]:
    names = []
    while len(names) < count:
        name = invented_word(rng)
        if name not in names:
            names.append(name)
    return names


def make_needles(family: str, rng, avoid=frozenset()) -> Needles:
    """The needles, question and answer of one document of `family`; no key equals a number in
    `avoid` (the haystack's) or another key of the document."""
    if family == "single":
        key, = _keys(rng, 1, avoid)
        return Needles([SINGLE_NEEDLE.format(key=key)], [], SINGLE_QUESTION, f" {key}")
    if family in ("multikey", "multiquery"):
        keys, names = _keys(rng, NUM_KEYS, avoid), _names(rng, NUM_KEYS)
        needles = [KEYED_NEEDLE.format(name=n, key=k) for n, k in zip(names, keys)]
        if family == "multikey":
            return Needles(needles[:1], needles[1:], KEYED_QUESTION.format(name=names[0]), f" {keys[0]}", True)
        return Needles(needles[:2], needles[2:], QUERY_QUESTION.format(a=names[0], b=names[1]),
                       f" {keys[0]} and {keys[1]}", True)
    if family == "multivalue":
        keys, (name,) = _keys(rng, NUM_VALUES, avoid), _names(rng, 1)
        return Needles([VALUE_NEEDLE.format(name=name, key=k) for k in keys], [], VALUES_QUESTION.format(name=name),
                       " " + ", ".join(keys))
    if family == "vt":
        (key, decoy), names = _keys(rng, 2, avoid), _names(rng, 2 * NUM_HOPS)
        chain, other = names[:NUM_HOPS], names[NUM_HOPS:]   # a second chain, bound to a decoy value
        bind = [VT_BIND.format(name=chain[0], value=key)] + [VT_BIND.format(name=b, value=a)
                                                           for a, b in zip(chain, chain[1:])]
        decoys = [VT_BIND.format(name=other[0], value=decoy)] + [VT_BIND.format(name=b, value=a)
                                                               for a, b in zip(other, other[1:])]
        return Needles(bind, decoys, VT_QUESTION.format(key=key), " " + " ".join(chain))
    raise ValueError(f"family: unknown {family!r}; accepted: {', '.join(FAMILIES)}")


def _encode(tokenizer, text) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _place(needles: Needles, boundaries: int, limit: int, depth, rng) -> dict[int, list[str]]:
    """Sentence boundary (0..boundaries) -> needles inserted there, in order. Asked needles:
    the first at `depth` percent of the boundaries up to `limit`, the others after it up to
    `limit`, in order; LOCAL: all at the last boundary. Distractor needles: in order, anywhere
    up to `limit`, before asked needles at the same boundary."""
    first = boundaries if depth == LOCAL else round(limit * float(depth) / 100)
    if needles.block:
        block = [*needles.asked, *needles.others]
        rng.shuffle(block)
        return {first: block}
    if depth == LOCAL:
        asked = [boundaries] * len(needles.asked)
    else:
        asked = [first, *sorted(rng.randint(first, limit) for _ in needles.asked[1:])]
    others = sorted(rng.randint(0, limit) for _ in needles.others)
    order = sorted([(b, 0, i) for i, b in enumerate(others)] + [(b, 1, i) for i, b in enumerate(asked)])
    at: dict[int, list[str]] = {}
    for boundary, kind, i in order:
        at.setdefault(boundary, []).append(needles.asked[i] if kind else needles.others[i])
    return at


def needle_document(tokenizer, pool: SentencePool, family: str, length: int, depth, gap: int, rng,
                    with_ids: bool = False) -> dict:
    """{context, target, distance, needles}: the context ends with the question, the target is
    the answer, together at most `length` tokens; every asked needle ends at least `gap` tokens
    before the question (`distance`: the smallest such count, in tokens), except at depth LOCAL.
    `with_ids`: also `ids` and `first_target`, the request's tokens from the pieces' (equal to
    encoding the text: tests/test_needles.py), so that a long document is not tokenized again,
    and `needle_spans`, the (start, end) token span of each asked needle."""
    needles = make_needles(family, rng, pool.numbers)
    fixed = sum(len(_encode(tokenizer, t)) for t in [*needles.asked, *needles.others, needles.question,
                                                      needles.answer])
    picked = pool.draw(rng, length - fixed)
    sizes = [len(pool.tokens[i]) for i in picked]
    # The last boundary with at least `gap` haystack tokens after it.
    after, limit = 0, len(picked)
    while limit > 0 and after < gap:
        limit -= 1
        after += sizes[limit]
    if depth != LOCAL and after < gap:
        raise ValueError(f"evaluation.retrieval.{family}: a {length}-token {family} document cannot put {gap} "
                         f"tokens (evaluation.needle_gap, and a margin) between its needles and the question; "
                         f"accepted: longer documents or a smaller gap")
    at = _place(needles, len(picked), limit, depth, rng)
    pieces, ids, spans, count = [], [], [], 0  # count: tokens so far (ids holds them only `with_ids`)
    for boundary in range(len(picked) + 1):
        for needle in at.get(boundary, []):
            pieces.append(needle)
            encoded = _encode(tokenizer, needle)
            if needle in needles.asked:
                spans.append((count, count + len(encoded)))
            count += len(encoded)
            if with_ids:
                ids += encoded
        if boundary < len(picked):
            pieces.append(pool.sentences[picked[boundary]])
            count += sizes[boundary]
            if with_ids:
                ids += pool.tokens[picked[boundary]]
    doc = {"context": "".join(pieces) + needles.question, "target": needles.answer,
           "distance": count - max(end for _, end in spans), "needles": needles.asked}
    if with_ids:
        ids += _encode(tokenizer, needles.question)
        doc.update(first_target=len(ids), ids=ids + _encode(tokenizer, needles.answer), needle_spans=spans)
    return doc


def needle_documents(tokenizer, family: str, haystack: str, length: int, depths, docs_per_depth: int, seed: int,
                     gap: int, with_ids: bool = False, pool: SentencePool | None = None) -> list[dict]:
    """The evaluation documents of one family, haystack and length: {context, target, family,
    haystack, length, depth (a string: a percentage or LOCAL), distance, needles} for each depth
    and document; the same for the same tokenizer, seed and gap (the lm-eval tasks and the
    suite share them); `pool`: the haystack's evaluation pool, if the caller has built it."""
    pool = pool or SentencePool.build(tokenizer, seed, "evaluation", haystack)
    rows = []
    for depth in depths:
        for k in range(docs_per_depth):
            rng = stream_rng(seed, NEEDLE_EVAL, length, f"{family}-{haystack}-{depth}-{k}")
            doc = needle_document(tokenizer, pool, family, length, depth, gap, rng, with_ids)
            rows.append({**doc, "family": family, "haystack": haystack, "length": length, "depth": str(depth)})
    return rows


def validation_documents(tokenizer, family: str, length: int, count: int, seed: int, gap: int) -> list[dict]:
    """`count` documents of `family` at `length` tokens, needles at depth 0%, on the validation
    split of the training filler (never an evaluation haystack or document): what a choice made
    during training, such as the shared first stage's, is scored on."""
    pool = SentencePool.build(tokenizer, seed, "validation")
    return [needle_document(tokenizer, pool, family, length, 0, gap, stream_rng(seed, NEEDLE_SELECT, length,
                                                                                 f"{family}-{k}"), with_ids=True)
            for k in range(count)]


def needle_sample(tokenizer, pool: SentencePool, family: str, length: int, rng) -> tuple[list[int], list[int]]:
    """A training sample of exactly `length` tokens ending with question and answer, the asked
    needles from a random depth on (anywhere, also right before the question), distractor
    needles anywhere; returns (ids, flags) with flags 1 on the answer tokens."""
    needles = make_needles(family, rng, pool.numbers)
    question, answer = _encode(tokenizer, needles.question), _encode(tokenizer, needles.answer)
    encoded = {t: _encode(tokenizer, t) for t in [*needles.asked, *needles.others]}
    budget = length - len(question) - len(answer) - sum(map(len, encoded.values()))
    if budget < 0:
        raise ValueError(f"data.sample_len: {length} tokens cannot hold a {family} retrieval document "
                         f"(needs at least {length - budget})")
    pieces, used = [], 0
    while used < budget:        # filler sentences, the last one cut so that they hold `budget` tokens
        pieces.append(pool.tokens[rng.randrange(len(pool.tokens))][:budget - used])
        used += len(pieces[-1])
    at = _place(needles, len(pieces), len(pieces), rng.uniform(0, 100), rng)
    ids = []
    for boundary in range(len(pieces) + 1):
        for needle in at.get(boundary, []):
            ids += encoded[needle]
        if boundary < len(pieces):
            ids += pieces[boundary]
    ids += question + answer
    return ids, [0] * (length - len(answer)) + [1] * len(answer)


CHECK_MARGIN = 64  # tokens: documents drawn at random hold about as many, give or take a sentence


def check_grid(tokenizer, cells, gap: int, seed: int):
    """Before training: every (family, haystack, length) of the grid can hold its needles
    `gap` tokens (and a margin) before the question with this tokenizer (ValueError otherwise)."""
    pools = {}
    for family, haystack, length in cells:
        if haystack not in pools:
            pools[haystack] = SentencePool.build(tokenizer, seed, "evaluation", haystack)
        needle_document(tokenizer, pools[haystack], family, length, 0, gap + CHECK_MARGIN,
                        stream_rng(seed, NEEDLE_EVAL, length, f"{family}-{haystack}-check"))
