"""Data for a run: source -> tokenizer -> train / validation / test samples (cached as Arrow).

The splits are made before the samples, so that no text reaches two of them: the embedded
corpus generates each split's documents from a stream of its own (infini_bench/seeds.py:
suite seed, purpose, stage = sample length, split), and a text source sends each document to
one split. Each split's documents are EOS-joined into one token stream and cut into
consecutive samples (as the reference cut the Pile's token stream), the first from an
arbitrary offset of the first document: a sample starts anywhere in a document, so a position
bin measures how much context precedes a token, not a section of a document.

Samples carry `input_ids` and `recall` (1 where the token is a recall mention of the embedded
corpus, or the answer of a retrieval document; all 0 for other sources). A `retrieval_fraction`
of each split's samples are retrieval documents (data/needles.py) of the same length, their
families drawn by `retrieval_mix`, their haystack the training filler. The
training split also gets the reversal facts' forward sentences, repeated and packed into
samples (the control facts never are: data/reversal.py). Validation selects the checkpoint;
test is what the leaderboard reports.
"""

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

from ..config import DataConfig
from ..io import atomic_dir
from ..seeds import (CORPUS, CORPUS_OFFSET, DOCUMENT_SPLIT, LONG_DOCUMENT, REVERSAL_ORDER, RETRIEVAL_TRAIN, TOKENIZER,
                     stream_rng, stream_seed)
from .embedded import MATERIALS, OBJECTS, embedded_documents, invented_word
from .needles import SentencePool, make_needles, needle_sample
from .reversal import Fact, reversal_facts
from .sources import parse_source, stream_texts
from .tokenizer import encode_long, load_tokenizer, tokenizer_fingerprint

CACHE_VERSION = 4
SPLITS = ("train", "validation", "test")


def default_cache_dir() -> Path:
    """Where tokenizers and tokenized samples are cached: $INFINI_BENCH_CACHE or ~/.cache/infini_bench."""
    return Path(os.environ.get("INFINI_BENCH_CACHE", Path.home() / ".cache" / "infini_bench"))


@dataclass
class DataBundle:
    train: "object"                # datasets.Dataset
    validation: "object"
    test: "object"
    tokenizer: "object"
    facts: dict[str, list[Fact]]   # "trained" and "control" reversal facts
    info: dict = field(default_factory=dict)


def split_sizes(config: DataConfig) -> dict:
    """Samples per split (validation and test at least one each)."""
    validation = max(1, round(config.val_fraction * config.num_samples))
    test = max(1, round(config.test_fraction * config.num_samples))
    return {"train": config.num_samples - validation - test, "validation": validation, "test": test}


def _num_retrieval(config: DataConfig, samples: int) -> int:
    return round(samples * config.retrieval_fraction)


def _corpus_documents(config: DataConfig, split: str, samples: int):
    """Enough documents of the split's own stream for `samples` samples: each document has at
    least sample_len words (so tokens), one more makes up for the first sample's offset."""
    return embedded_documents(samples + 1, stream_seed(config.seed, CORPUS, config.sample_len, split),
                              min_words=config.sample_len)


def _cut(ids, recall, sample_len, count, offset=0):
    ids, recall = ids[offset:], recall[offset:]
    return {"input_ids": [ids[i:i + sample_len] for i in range(0, count * sample_len, sample_len)],
            "recall": [recall[i:i + sample_len] for i in range(0, count * sample_len, sample_len)]}


def _embedded_samples(docs, tokenizer, config: DataConfig, split: str, count: int) -> dict:
    """`count` consecutive samples of the split's EOS-joined token stream, recall tokens flagged
    (a token is recall when its characters overlap a recall span of its document)."""
    encoded = tokenizer([d["text"] for d in docs], return_offsets_mapping=True, add_special_tokens=False)
    ids, recall = [], []
    for tokens, offsets, doc in zip(encoded["input_ids"], encoded["offset_mapping"], docs):
        chars = np.zeros(len(doc["text"]) + 1, dtype=np.int64)
        for start, end in doc["recall_spans"]:
            chars[start + 1:end + 1] = 1
        covered = np.cumsum(chars)  # covered[e] - covered[s]: recall characters in [s, e)
        ids += tokens + [tokenizer.eos_token_id]
        recall += [int(covered[e] > covered[s]) for s, e in offsets] + [0]
    offset = stream_rng(config.seed, CORPUS_OFFSET, config.sample_len, split).randrange(config.sample_len)
    return _cut(ids, recall, config.sample_len, count, offset)


def _split_of(draw: float, config: DataConfig) -> str:
    return ("test" if draw < config.test_fraction else
            "validation" if draw < config.test_fraction + config.val_fraction else "train")


def _source_samples(kind, path, tokenizer, config: DataConfig, counts: dict) -> dict:
    """Per split, `counts[split]` consecutive samples of the EOS-joined tokens of the documents
    that went to it (each document goes to one split, drawn from the suite seed's stream), the
    first from an arbitrary offset."""
    assign = stream_rng(config.seed, DOCUMENT_SPLIT)
    offsets = {split: stream_rng(config.seed, CORPUS_OFFSET, config.sample_len, split).randrange(config.sample_len)
               for split in SPLITS}
    needed = {split: offsets[split] + counts[split] * config.sample_len for split in SPLITS}
    streams = {split: [] for split in SPLITS}
    for text in stream_texts(kind, path):
        split = _split_of(assign.random(), config)
        if len(streams[split]) < needed[split]:
            streams[split] += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if all(len(streams[s]) >= needed[s] for s in SPLITS):
            break
    out = {}
    for split, stream in streams.items():
        have = min(counts[split], max(len(stream) - offsets[split], 0) // config.sample_len)
        out[split] = _cut(stream, [0] * len(stream), config.sample_len, have, offsets[split])
    return out


def _training_texts(kind, path, config: DataConfig):
    """Raw text of the training split to train a tokenizer on (about 6 characters per token)."""
    budget, texts = config.num_samples * config.sample_len * 6, []
    assign = stream_rng(config.seed, DOCUMENT_SPLIT)
    for text in stream_texts(kind, path):
        if _split_of(assign.random(), config) == "train":
            texts.append(text)
            budget -= len(text)
            if budget <= 0:
                break
    return texts


def _retrieval_samples(config: DataConfig, tokenizer, split: str, count: int) -> dict:
    """`count` retrieval documents of the split, each of a family drawn by `retrieval_mix`."""
    pool = SentencePool.build(tokenizer, config.seed, split)
    rng = stream_rng(config.seed, RETRIEVAL_TRAIN, config.sample_len, split)
    families, shares = zip(*sorted(config.retrieval_mix.items()))
    ids, recall = zip(*(needle_sample(tokenizer, pool, rng.choices(families, shares)[0], config.sample_len, rng)
                        for _ in range(count)))
    return {"input_ids": list(ids), "recall": list(recall)}


def _cache_key(config: DataConfig, kind, path, tokenizer) -> str:
    files = []
    if path:
        p = Path(path)
        for f in sorted(p.rglob("*") if p.is_dir() else [p]):
            if f.is_file():
                files.append([str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns])
    key = dict(version=CACHE_VERSION, kind=kind, files=files, tokenizer=tokenizer_fingerprint(tokenizer),
               **{k: getattr(config, k) for k in ("num_samples", "sample_len", "val_fraction", "test_fraction",
                                                   "retrieval_fraction", "retrieval_mix", "seed")})
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _build_splits(config: DataConfig, kind, path, tokenizer, corpus) -> DatasetDict:
    sizes = split_sizes(config)
    retrieval = {split: _num_retrieval(config, n) for split, n in sizes.items()}
    counts = {split: sizes[split] - retrieval[split] for split in SPLITS}
    if kind == "embedded":
        samples = {split: _embedded_samples(corpus[split], tokenizer, config, split, counts[split])
                   for split in SPLITS}
    else:
        samples = _source_samples(kind, path, tokenizer, config, counts)
    splits = {}
    for split in SPLITS:
        have = len(samples[split]["input_ids"])
        if have < counts[split]:
            raise ValueError(f"data: {config.source} gives only {have} full {split} samples of "
                             f"{config.sample_len} tokens; num_samples asks for {counts[split]}")
        dataset = Dataset.from_dict(samples[split])
        if retrieval[split]:
            dataset = concatenate_datasets([dataset, Dataset.from_dict(
                _retrieval_samples(config, tokenizer, split, retrieval[split]))])
        splits[split] = dataset
    return DatasetDict(splits)


def prepare_data(config: DataConfig, cache_dir: Path, tokenizer=None) -> DataBundle:
    """Samples for `config`; `tokenizer` (e.g. a checkpoint's own) replaces the configured one,
    which is otherwise trained (if it is a BPE) on training-split text only."""
    kind, path = parse_source(config.source)
    facts = reversal_facts(config.reversal_facts, config.reversal_relations, seed=config.seed)
    corpus = None
    if kind == "embedded":
        sizes = split_sizes(config)
        corpus = {split: _corpus_documents(config, split, n - _num_retrieval(config, n)) for split, n in sizes.items()}
    if tokenizer is not None:
        tokenizer_name = getattr(tokenizer, "name_or_path", "") or "given"
    else:
        texts = ([d["text"] for d in corpus["train"]] if corpus is not None else
                 _training_texts(kind, path, config) if config.tokenizer in ("bpe", "pythia") else [])
        if config.retrieval_fraction:  # the trained families' needles and questions in the vocabulary
            rng = stream_rng(config.seed, TOKENIZER)
            for family in sorted(config.retrieval_mix):
                for _ in range(100):
                    n = make_needles(family, rng)
                    texts.append("".join([*n.asked, *n.others, n.question, n.answer]))
        # The training split as trained: each fact sentence as often as it is repeated.
        texts += [f.forward for f in facts["trained"]] * max(1, config.reversal_repeats)
        tokenizer, tokenizer_name = load_tokenizer(config.tokenizer, texts, config.vocab_size, cache_dir / "tokenizers")
    sample_dir = cache_dir / "samples" / _cache_key(config, kind, path, tokenizer)
    if not (sample_dir / "dataset_dict.json").exists():
        splits = _build_splits(config, kind, path, tokenizer, corpus)
        with atomic_dir(sample_dir) as tmp:
            splits.save_to_disk(str(tmp))
    splits = load_from_disk(str(sample_dir))
    train = splits["train"]
    reversal = reversal_samples(facts["trained"], tokenizer, config)
    if reversal:
        train = concatenate_datasets([train, Dataset.from_dict(
            {"input_ids": reversal, "recall": [[0] * config.sample_len for _ in reversal]})])
    info = dict(source=config.source, kind=kind, tokenizer=tokenizer_name, vocab_size=len(tokenizer),
                train_samples=len(train), validation_samples=len(splits["validation"]),
                test_samples=len(splits["test"]), reversal_samples=len(reversal),
                retrieval_samples={split: _num_retrieval(config, n) for split, n in split_sizes(config).items()},
                sample_len=config.sample_len, cache=str(sample_dir), config=asdict(config))
    return DataBundle(train, splits["validation"], splits["test"], tokenizer, facts, info)


def reversal_samples(facts, tokenizer, config: DataConfig) -> list[list[int]]:
    """Forward sentences, each `reversal_repeats` times, shuffled, each after an EOS token, and
    packed.

    The stream is cycled to fill the last sample, so a few sentences appear once more rather
    than padding it."""
    if not config.reversal_repeats:
        return []
    sentences = [f.forward for f in facts] * config.reversal_repeats
    stream_rng(config.seed, REVERSAL_ORDER).shuffle(sentences)
    eos = tokenizer.eos_token_id
    stream = [t for s in sentences for t in [eos] + tokenizer(s, add_special_tokens=False)["input_ids"]]
    count = -(-len(stream) // config.sample_len)
    stream = list(itertools.islice(itertools.cycle(stream), count * config.sample_len))
    return [stream[i:i + config.sample_len] for i in range(0, len(stream), config.sample_len)]


RECALLS_PER_BIN = 128  # recalls of a fact-recall document per distance bin (fewer in a short one)
EVENT_TOKENS = 40      # at least the tokens of a statement or a recall sentence


def recall_document(tokenizer, length: int, seed: int, bins) -> tuple[list[int], list[tuple[int, int, int]]]:
    """A document of `length` tokens in which each fact (a person's number, in the corpus's
    words) is stated once and recalled once, later: (ids, [(start, end, distance)]) with the
    recall tokens ids[start:end] (the number) and the tokens since the statement's end. Recall
    distances are drawn log-uniform within each bin of `bins` (distance since statement), as
    many in each bin (at most one fact per 256 tokens), so that every bin needs memory of its
    reach; the text in between is the evaluation filler."""
    rng = stream_rng(seed, LONG_DOCUMENT)
    pool = SentencePool.build(tokenizer, seed, "evaluation")
    edges = [*sorted(b for b in bins if b < length), length]
    per_bin = max(1, min(RECALLS_PER_BIN, length // (256 * (len(edges) - 1))))
    # Statements and recalls add about 30 tokens each to the planned filler positions: plan them
    # within what is left, so that no recall is pushed past the end.
    planned = length - per_bin * (len(edges) - 1) * 2 * EVENT_TOKENS
    events = []                          # (recall position, distance), planned in filler tokens
    for low, high in zip(edges, edges[1:]):
        for _ in range(per_bin):
            distance = int(np.exp(rng.uniform(np.log(max(low, 64)), np.log(min(high, planned)))))
            events.append((rng.randrange(distance, planned), distance))
    plan = sorted([(r - d, "state", i) for i, (r, d) in enumerate(events)] + [(r, "recall", i)
                                                                           for i, (r, d) in enumerate(events)])
    people = {}
    ids, spans, stated = [], [], {}
    for at, kind, i in plan:
        while len(ids) < at:
            ids += pool.tokens[rng.randrange(len(pool.tokens))]
        if kind == "state":
            people[i] = (f"{invented_word(rng)} {invented_word(rng)}", str(rng.randrange(1000, 10000)))
            name, number = people[i]
            ids += tokenizer(f" {name} keeps a {rng.choice(MATERIALS)} {rng.choice(OBJECTS)} and the number "
                             f"{number}.", add_special_tokens=False)["input_ids"]
            stated[i] = len(ids)
        else:
            name, number = people[i]
            ids += tokenizer(f" The number of {name} was", add_special_tokens=False)["input_ids"]
            answer = tokenizer(f" {number}", add_special_tokens=False)["input_ids"]
            spans.append((len(ids), len(ids) + len(answer), len(ids) - stated[i]))
            ids += answer + tokenizer(".", add_special_tokens=False)["input_ids"]
    if len(ids) > length:
        raise ValueError(f"evaluation.long_ppl_length: {length} tokens cannot hold {len(spans)} recalls")
    while len(ids) < length:
        ids += pool.tokens[rng.randrange(len(pool.tokens))]
    return ids[:length], spans
