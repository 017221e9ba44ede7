"""Retrieval documents (data/needles.py): lengths, the needle-to-question distance of every
scored document, distractor numbers, training samples of every family, scoring, and the
fact-recall document."""

import random
import re

import numpy as np
import pytest
import torch

from helpers import needle_tokenizer
from infini_bench.config import FAMILIES, HAYSTACKS, NEEDLE_GAP, EvalConfig
from infini_bench.data import recall_document
from infini_bench.data.embedded import embedded_documents
from infini_bench.data.needles import LOCAL, SentencePool, needle_documents, needle_sample, validation_documents
from infini_bench.evaluation import encode_request, retrieval_cell

TASK_LENGTHS = (1024, 4096, 16384, 65536, 262144, 1048576)   # the infini_niah_* / infini_vt_* tasks
DEPTHS = (*EvalConfig().retrieval_depths, LOCAL)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return needle_tokenizer(tmp_path_factory.mktemp("cache"))


def needle_token_distances(tokenizer, doc) -> list[int]:
    """Tokens between the end of each asked needle and the question, from the tokenized text."""
    offsets = tokenizer(doc["context"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    question = next(i for i, (start, _) in enumerate(offsets) if start >= question_start(doc))
    ends = [end for _, end in offsets]
    distances = []
    for needle in doc["needles"]:
        last = int(np.searchsorted(ends, doc["context"].index(needle) + len(needle)))  # the needle's last token
        distances.append(question - last - 1)
    return distances


def question_start(doc) -> int:
    """Character offset of the question: the text after the last needle or haystack sentence."""
    for marker in (" What ", " Which "):
        at = doc["context"].rfind(marker)
        if at >= 0:
            return at
    raise AssertionError("no question")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_documents_hold_length_and_put_needles_two_segments_before_the_question(tokenizer, family, haystack):
    """Counted on the tokenized text: at most `length` tokens (nearly as many); every asked needle
    of a scored depth ends at least the gap before the question, the local control's right
    before it; the same documents for the same seed."""
    gap = 128
    for length in (1024, 4096):
        rows = needle_documents(tokenizer, family, haystack, length, DEPTHS, 3, seed=3, gap=gap)
        assert rows == needle_documents(tokenizer, family, haystack, length, DEPTHS, 3, seed=3, gap=gap)
        assert len({r["target"] for r in rows}) == len(rows)
        for r in rows:
            tokens, _ = encode_request(tokenizer, r["context"], r["target"])
            assert length - 60 <= len(tokens) <= length
            distances = needle_token_distances(tokenizer, r)
            assert min(distances) == r["distance"]
            if r["depth"] == LOCAL:
                assert max(distances) < 80      # the needles, then the question
            else:
                assert r["distance"] >= gap


@pytest.mark.slow
def test_every_scored_document_of_every_task_keeps_its_distance(tokenizer):
    """All task lengths (to 1M), the tasks' own defaults (20 documents a depth, the 512-token
    gap): the distance each document records, whose computation the test above checks."""
    pool = SentencePool.build(tokenizer, 42, "evaluation", "filler")  # tokenized once, as the grid does
    for family in FAMILIES:
        for length in TASK_LENGTHS:
            rows = needle_documents(tokenizer, family, "filler", length, DEPTHS, EvalConfig().retrieval_docs, 42,
                                    NEEDLE_GAP, pool=pool)
            scored = [r for r in rows if r["depth"] != LOCAL]
            assert len(scored) == 20 * len(EvalConfig().retrieval_depths)
            assert min(r["distance"] for r in scored) >= NEEDLE_GAP, (family, length)


def test_validation_documents_are_never_evaluation_documents(tokenizer):
    """The documents that choose the shared first stage: depth 0%, the gap kept, and streams of
    their own (the training filler's validation split), so that none is a scored grid document
    and no key is a scored key. (The filler's template sentences recur in every split.)"""
    chosen = validation_documents(tokenizer, "single", 1024, 20, seed=0, gap=NEEDLE_GAP)
    scored = needle_documents(tokenizer, "single", "filler", 1024, [0], 20, seed=0, gap=NEEDLE_GAP)
    assert len(chosen) == 20 and all(d["distance"] >= NEEDLE_GAP for d in chosen)
    assert not {d["context"] for d in chosen} & {d["context"] for d in scored}
    assert not {d["target"] for d in chosen} & {d["target"] for d in scored}


def test_depth_orders_the_needle_within_the_haystack(tokenizer):
    rows = needle_documents(tokenizer, "single", "filler", 4096, (0, 25, 50, 75), 4, seed=1, gap=128)
    where = {d: np.mean([r["context"].index(r["needles"][0]) / len(r["context"]) for r in rows if r["depth"] == d])
             for d in ("0", "25", "50", "75")}
    assert where["0"] < 0.02 and abs(where["50"] - 0.5) < 0.1 and where["0"] < where["25"] < where["50"] < where["75"]


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_haystacks_hold_distractor_numbers_never_equal_to_a_key(tokenizer, haystack):
    pool = SentencePool.build(tokenizer, 2, "evaluation", haystack)
    assert len(pool.numbers) > 100
    for family in FAMILIES:
        for r in needle_documents(tokenizer, family, haystack, 16384, DEPTHS, 2, seed=2, gap=128):
            numbers = re.findall(r"\b\d{5}\b", r["context"])
            keys = set(re.findall(r"\b\d{5}\b", " ".join(r["needles"])))
            distractors = [n for n in numbers if n not in keys]
            assert len(distractors) >= 5                       # throughout the haystack
            assert not keys & pool.numbers and not keys & set(distractors)
            text = r["context"][:question_start(r)]
            for needle in r["needles"]:
                text = text.replace(needle, "")
            assert not keys & set(re.findall(r"\b\d{5}\b", text))   # a key only where a needle states it


def test_heldout_haystack_is_never_training_text(tokenizer):
    """The held-out haystack's words occur in no training filler and no corpus document; training
    pools are always the filler."""
    heldout = SentencePool.build(tokenizer, 42, "evaluation", "heldout")
    training = SentencePool.build(tokenizer, 42, "train")
    corpus = " ".join(d["text"] for d in embedded_documents(300, seed=0))
    heldout_words = {w.strip(".,:") for s in heldout.sentences for w in s.split() if not w[0].isdigit()}
    training_words = {w.strip(".,:") for s in [*training.sentences, *corpus.split()] for w in s.split()}
    assert heldout_words and not heldout_words & training_words
    with pytest.raises(ValueError, match="evaluation haystack"):
        SentencePool.build(tokenizer, 42, "train", "heldout")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_samples_of_every_family(tokenizer, family):
    """Exactly sample_len tokens, ending with the question and the answer (flagged); the answer's
    needles are in the sample."""
    pool = SentencePool.build(tokenizer, 42, "train")
    for seed in range(5):
        ids, flags = needle_sample(tokenizer, pool, family, 256, random.Random(seed))
        assert len(ids) == len(flags) == 256
        n = sum(flags)
        assert flags[-n:] == [1] * n and sum(flags[:-n]) == 0
        text = tokenizer.decode(ids)
        answer = tokenizer.decode(ids[-n:])
        for value in re.findall(r"\d{5}|[A-Z][a-z]+", answer):
            assert text.count(value) >= 2      # stated in a needle, and answered


class Oracle(torch.nn.Module):
    """A windowed 'model' that predicts each next token of known sequences (and the EOS token
    elsewhere): given the right answers it is right, given wrong ones it is wrong."""

    def __init__(self, sequences, vocab):
        super().__init__()
        self.config = type("Config", (), {"max_position_embeddings": 1 << 21})()
        self.next = {(tuple(seq[:32]), t): seq[t + 1] for seq in sequences for t in range(len(seq) - 1)}
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                logits[b, t, self.next.get((tuple(row[:32]), t), 0)] = 1.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_gives_the_right_answer_1_and_a_wrong_one_0(tokenizer, family):
    rows = needle_documents(tokenizer, family, "filler", 1024, (0, LOCAL), 2, seed=5, gap=128)
    right = [encode_request(tokenizer, r["context"], r["target"])[0] for r in rows]
    swapped = [encode_request(tokenizer, r["context"], other["target"])[0]
               for r, other in zip(rows, rows[1:] + rows[:1])]
    vocab = len(tokenizer)
    assert retrieval_cell(Oracle(right, vocab), tokenizer, rows, 4, "cpu")["correct"] == [1] * len(rows)
    assert retrieval_cell(Oracle(swapped, vocab), tokenizer, rows, 4, "cpu")["correct"] == [0] * len(rows)


def test_recall_document_states_each_fact_once_and_spreads_distances(tokenizer):
    bins = (0, 2048, 16384)
    ids, spans = recall_document(tokenizer, 65536, seed=1, bins=bins)
    assert len(ids) == 65536 and (ids, spans) == recall_document(tokenizer, 65536, seed=1, bins=bins)
    counts = np.histogram([d for _, _, d in spans], [0, 2048, 16384, 65536])[0]
    assert counts.min() >= 0.9 * counts.max() and counts.min() > 50
    text = tokenizer.decode(ids)
    for start, end, distance in spans[:40]:
        number = tokenizer.decode(ids[start:end]).strip()
        before = tokenizer.decode(ids[:start])
        name = re.search(r"The number of (\w+ \w+) was$", before.rstrip()).group(1)
        assert text.count(f"{name} keeps a") == 1 and before.count(f"{name} keeps a") == 1
        statement = before.rindex(f"{name} keeps a")
        assert re.match(rf"{name} keeps a \w+ \w+ and the number {number}\.", before[statement:])
        assert distance > 0


def test_a_long_request_is_encoded_once_to_the_same_tokens(tokenizer):
    """encode_request's one-pass encoding of a long context equals encoding the whole text and
    the context apart (lm-eval's split)."""
    from infini_bench.data.tokenizer import encode_long

    for haystack in HAYSTACKS:
        doc, = needle_documents(tokenizer, "multivalue", haystack, 131072, (50,), 1, seed=9, gap=128)
        assert len(doc["context"]) > 100_000
        whole = encode_long(tokenizer, doc["context"] + doc["target"])
        assert encode_request(tokenizer, doc["context"], doc["target"]) == (whole, len(encode_long(
            tokenizer, doc["context"])))


def test_the_suite_request_tokens_are_the_text_tokens(tokenizer):
    """The ids a document is built from (what the suite scores) equal encoding its text (what
    lm-eval scores), for every family and haystack."""
    for family in FAMILIES:
        for haystack in HAYSTACKS:
            for r in needle_documents(tokenizer, family, haystack, 2048, DEPTHS, 1, seed=4, gap=128, with_ids=True):
                assert (r["ids"], r["first_target"]) == encode_request(tokenizer, r["context"], r["target"])


def test_no_position_gives_a_keyed_answer_away(tokenizer):
    """Multi-key and multi-query needles form one block in random order: the first (or last)
    key stated is the asked one about as often as chance, at every depth."""
    for family in ("multikey", "multiquery"):
        first = last = total = 0
        for depth in (0, 50, LOCAL):
            for r in needle_documents(tokenizer, family, "filler", 1024, (depth,), 40, seed=6, gap=128):
                keys = re.findall(r"pass key of \w+ is (\d{5})", r["context"])
                asked = r["target"].split()[0]
                first, last, total = first + (keys[0] == asked), last + (keys[-1] == asked), total + 1
        assert 0.12 < first / total < 0.4 and 0.12 < last / total < 0.4, (family, first, last, total)


def test_a_tokenizer_that_does_not_split_at_spaces_is_refused(tokenizer):
    class Merging:
        """Tokenizes a text as one token per character, but merges '. ' across pieces."""
        name_or_path = "merging"

        def __call__(self, texts, add_special_tokens=False):
            encode = lambda t: [ord(c) for c in t.replace(". ", "|")]
            return {"input_ids": [encode(t) for t in texts] if isinstance(texts, list) else encode(texts)}

    with pytest.raises(ValueError, match="^tokenizer: merging does not tokenize space-led pieces"):
        SentencePool.build(Merging(), 42, "evaluation", "filler")


def test_a_grid_that_cannot_hold_its_gap_is_refused_before_training(tokenizer):
    from infini_bench.data.needles import check_grid

    check_grid(tokenizer, [("multikey", "filler", 1024)], 128, seed=1)
    with pytest.raises(ValueError, match=r"^evaluation.retrieval.multikey: a 256-token multikey document cannot"):
        check_grid(tokenizer, [("multikey", "filler", 256)], 128, seed=1)
