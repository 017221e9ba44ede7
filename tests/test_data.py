"""Data sources, embedded corpus with recall flags, tokenizer, cache, reversal facts."""

import json
import re

import pytest

from infini_bench.data import DataConfig, prepare_data, reversal_samples
from infini_bench.data.embedded import embedded_documents
from infini_bench.data.reversal import FACT_SETS, distractor_facts, reversal_facts, reversal_questions
from infini_bench.evaluation import encode_request
from infini_bench.data.sources import parse_source, stream_texts


def small(**overrides):
    values = dict(num_samples=40, sample_len=64, tokenizer="bpe", vocab_size=400, reversal_facts=33,
                  reversal_repeats=2)
    values.update(overrides)
    return DataConfig(**values)


def test_embedded_corpus_is_deterministic_and_seeded():
    assert embedded_documents(5, seed=3) == embedded_documents(5, seed=3)
    assert embedded_documents(5, seed=3) != embedded_documents(5, seed=4)


def test_recall_spans_refer_back_to_earlier_statements():
    for doc in embedded_documents(20, seed=0, min_words=256):
        text = doc["text"]
        assert doc["recall_spans"]
        for start, end in doc["recall_spans"]:
            mention = text[start:end]
            assert mention in text[:start], mention  # stated before it is recalled
        first_recall = doc["recall_spans"][0][0]
        assert len(text[:first_recall].split()) > 64  # beyond a 64-token segment


def test_recall_flags_mark_exactly_the_recall_mentions(tmp_path):
    """The validation samples are consecutive cuts of the split's EOS-joined documents; a token
    is flagged exactly when its characters overlap a recall span of its document."""
    from infini_bench.data import split_sizes
    from infini_bench.data.tokenizer import EOS
    from infini_bench.seeds import CORPUS, stream_seed

    config = small(sample_len=128, vocab_size=1000)
    data = prepare_data(config, tmp_path)
    tokenizer = data.tokenizer
    docs = embedded_documents(split_sizes(config)["validation"] + 1, stream_seed(42, CORPUS, 128, "validation"),
                              min_words=128)
    joined, recall_chars = "", set()
    for d in docs:
        recall_chars |= {len(joined) + c for a, b in d["recall_spans"] for c in range(a, b)}
        joined += d["text"] + EOS
    ids = [t for s in data.validation["input_ids"] for t in s]
    flags = [f for s in data.validation["recall"] for f in s]
    # Character span of each token, from the lengths of decoded prefixes (ASCII text).
    ends = [len(tokenizer.decode(ids[:i + 1])) for i in range(len(ids))]
    text = tokenizer.decode(ids)
    at = joined.index(text)
    assert 0 < at < len(docs[0]["text"])  # the first sample starts inside the first document
    starts = [0] + ends[:-1]
    for start, end, flag in zip(starts, ends, flags):
        overlaps = any(at + c in recall_chars for c in range(start, end))
        assert bool(flag) == overlaps, (start, end, text[start:end])
    assert sum(flags) > 0


def test_samples_cached_under_source_tokenizer_and_sizes(tmp_path):
    first = prepare_data(small(), tmp_path)
    again = prepare_data(small(), tmp_path)
    assert first.info["cache"] == again.info["cache"]
    assert list(first.validation["input_ids"]) == list(again.validation["input_ids"])
    other = prepare_data(small(sample_len=48), tmp_path)
    assert other.info["cache"] != first.info["cache"]
    assert len(list((tmp_path / "samples").iterdir())) == 2
    assert all(len(x) == 48 for x in other.train["input_ids"])


def test_stages_built_with_a_tokenizer_trained_now_or_loaded_from_the_cache_are_described_alike(tmp_path):
    # A curriculum stage gets the suite's tokenizer; a sweep's driver trains it (empty cache) and
    # its trials load it: both must describe, and so fingerprint, the same stage.
    fresh = prepare_data(small(), tmp_path)
    cached = prepare_data(small(), tmp_path)
    stage = small(sample_len=32, reversal_repeats=0)
    assert prepare_data(stage, tmp_path, tokenizer=fresh.tokenizer).info == \
        prepare_data(stage, tmp_path, tokenizer=cached.tokenizer).info
    assert fresh.tokenizer.name_or_path == cached.tokenizer.name_or_path != ""


def test_split_and_sizes(tmp_path):
    data = prepare_data(small(num_samples=50, val_fraction=0.2, test_fraction=0.1), tmp_path)
    assert len(data.validation) == 10 and len(data.test) == 5
    assert data.info["train_samples"] == 35 + data.info["reversal_samples"]
    val = {tuple(x) for x in data.validation["input_ids"]}
    test = {tuple(x) for x in data.test["input_ids"]}
    assert not (val | test) & {tuple(x) for x in data.train["input_ids"]} and not val & test


def test_reversal_facts_well_formed():
    facts = reversal_facts(88, 8, seed=0)
    assert [len(facts[w]) for w in FACT_SETS] == [88, 88]
    every = facts["trained"] + facts["control"]
    assert len({f.name for f in every}) == len(every) and len({f.thing for f in every}) == len(every)
    assert reversal_facts(88, 8, seed=0) == facts != reversal_facts(88, 8, seed=1)
    for f in every:
        assert re.fullmatch(r" [A-Z][^.]* is [^.]+\.", f.forward) and re.fullmatch(r" [A-Z][^.]* is [^.]+\.", f.backward)
        assert f.backward.endswith(f" is {f.name}.") and f.forward.endswith(f" {f.thing}.")
        for direction in ("forward", "backward"):
            prompt, answer = f.query(direction)
            assert prompt + answer + "." == getattr(f, direction)
    for which in FACT_SETS:
        for direction in ("forward", "backward"):  # distractors: the same question's answers of the relation
            for i, question in enumerate(reversal_questions(facts[which], direction, 10, 0, which, "<eos>")):
                fact, others = facts[which][i], question["facts"][1:]
                assert question["facts"][0] == i and len(set(others)) == 10 and i not in others
                assert all(facts[which][j].relation == fact.relation for j in others)
                assert question["choices"] == [f" {facts[which][j].answer(direction)}" for j in question["facts"]]
                assert question["prompt"] + question["choices"][0] + "." == "<eos>" + getattr(fact, direction)
    with pytest.raises(ValueError, match="data.reversal_facts: 'the author of' has 11 facts, 11 distractors need 12"):
        distractor_facts(facts["trained"], 0, 11, seed=0, which="trained")


def test_answers_are_the_tokens_training_saw(tmp_path):
    """Same surface form: every question's context starts with EOS as every trained sentence does,
    its answer's tokens are the tokens of that answer in the trained forward sentence (the
    name: its first tokens) and occur contiguously in the training stream; a forward question
    with its answer is the trained sentence itself."""
    config = small(reversal_repeats=3)
    data = prepare_data(config, tmp_path)
    tokenizer, trained = data.tokenizer, data.facts["trained"]
    stream = [t for s in reversal_samples(trained, tokenizer, config) for t in s]

    def occurs(part, whole):
        return any(whole[i:i + len(part)] == part for i in range(len(whole) - len(part) + 1))

    for direction in ("forward", "backward"):
        questions = reversal_questions(trained, direction, 10, config.seed, "trained", tokenizer.eos_token)
        for fact, question in zip(trained, questions):
            tokens, start = encode_request(tokenizer, question["prompt"], question["choices"][0])
            answer, sentence = tokens[start:], tokenizer(fact.forward, add_special_tokens=False)["input_ids"]
            assert tokens[0] == tokenizer.eos_token_id and occurs(answer, stream) and occurs(answer, sentence)
            if direction == "backward":
                assert sentence[:len(answer)] == answer
            else:
                assert tokens == [tokenizer.eos_token_id] + sentence[:-1] and occurs(tokens, stream)


def test_reversal_sentences_packed_forward_only(tmp_path):
    config = small()
    data = prepare_data(config, tmp_path)
    packed = reversal_samples(data.facts["trained"], data.tokenizer, config)
    assert all(len(s) == config.sample_len for s in packed)
    text = data.tokenizer.decode([t for s in packed for t in s])
    eos = data.tokenizer.eos_token
    for fact in data.facts["trained"]:
        assert text.count(eos + fact.forward) >= config.reversal_repeats
        assert fact.backward not in text
    for fact in data.facts["control"]:
        assert fact.name not in text and fact.thing not in text
    assert data.info["reversal_samples"] == len(packed)


def write_pile_mirror(path, docs):
    with open(path, "w") as f:
        for text in docs:
            f.write(json.dumps({"text": text, "meta": {"pile_set_name": "Pile-CC"}}) + "\n")


def test_pile_loader_on_a_local_mirror(tmp_path):
    mirror = tmp_path / "pile"
    mirror.mkdir()
    docs = [d["text"] for d in embedded_documents(30, seed=1, min_words=80)]
    write_pile_mirror(mirror / "00.jsonl", docs)
    assert parse_source(f"pile:{mirror}") == ("pile", str(mirror))
    assert list(stream_texts("pile", str(mirror))) == docs
    data = prepare_data(small(source=f"pile:{mirror}", num_samples=20), tmp_path / "cache")
    assert data.info["kind"] == "pile" and len(data.validation) == 2
    tokens = [t for s in list(data.validation["input_ids"]) + list(data.train["input_ids"])[:18] for t in s]
    assert data.tokenizer.eos_token_id in tokens  # documents packed, EOS-separated


def test_pg19_loader_on_local_parquet(tmp_path):
    import pandas as pd

    books = [d["text"] for d in embedded_documents(6, seed=2, min_words=200)]
    pd.DataFrame({"short_book_title": [f"Book {i}" for i in range(6)], "publication_date": [1900] * 6,
                  "url": ["local"] * 6, "text": books}).to_parquet(tmp_path / "train-0.parquet")
    assert list(stream_texts("pg19", str(tmp_path))) == books


def test_hub_loader_checks_the_schema(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"content": "no text field"}) + "\n")
    with pytest.raises(ValueError, match="lack the field"):
        list(stream_texts("pile", str(path)))


@pytest.mark.parametrize("suffix", ["txt", "jsonl", "parquet"])
def test_local_files_and_folders(tmp_path, suffix):
    import pandas as pd

    docs = [d["text"] for d in embedded_documents(4, seed=5, min_words=60)]
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(docs):
        if suffix == "txt":
            (folder / f"{i}.txt").write_text(text)
        elif suffix == "jsonl":
            (folder / f"{i}.jsonl").write_text(json.dumps({"text": text}) + "\n")
        else:
            pd.DataFrame({"text": [text]}).to_parquet(folder / f"{i}.parquet")
    assert parse_source(str(folder)) == ("local", str(folder))
    assert sorted(stream_texts("local", str(folder))) == sorted(docs)


def test_unknown_or_missing_sources():
    with pytest.raises(ValueError, match="^data: 'wikipedia' is not a known source"):
        parse_source("wikipedia")
    with pytest.raises(ValueError, match="^data: local mirror"):
        parse_source("pile:/does/not/exist")


def test_too_little_data_is_reported(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("only a few words here")
    with pytest.raises(ValueError, match="^data: .* gives only 0 full train samples"):
        prepare_data(small(source=str(path)), tmp_path / "cache")


def test_long_texts_are_encoded_in_pieces_to_the_same_tokens(tmp_path):
    """encode_long cuts before spaces (also inside runs of spaces and next to newlines); the
    tokens equal those of encoding the whole text at once."""
    from infini_bench.data.tokenizer import encode_long

    tokenizer = prepare_data(small(), tmp_path).tokenizer
    text = " ".join(d["text"] for d in embedded_documents(30, seed=5))
    text = text.replace(". The", ".  The").replace(". Nobody", ".\nNobody").replace("Later", "\n  Later")
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    for piece_chars in (50, 333, 10_000, len(text) + 1):
        assert encode_long(tokenizer, text, piece_chars=piece_chars) == whole
