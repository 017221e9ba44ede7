"""Data for a run: source -> tokenizer -> fixed-length samples (cached as Arrow) -> train / validation.

Samples carry `input_ids` and `recall` (1 where the token is a recall mention of the embedded
corpus, or the answer of a pass-key document; all 0 for other sources). A `passkey_fraction`
of the samples are pass-key documents (data/passkey.py) of the same length. The training split
also gets the reversal facts' forward sentences, repeated and packed into samples.
"""

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset, concatenate_datasets, load_from_disk

from ..config import DataConfig
from ..io import atomic_dir
from .embedded import embedded_documents, make_document
from .passkey import NEEDLE, QUESTION, FillerPool, passkey_sample
from .reversal import Fact, reversal_facts
from .sources import parse_source, stream_texts
from .tokenizer import encode_long, load_tokenizer, tokenizer_fingerprint

CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """Where tokenizers and tokenized samples are cached: $INFINI_BENCH_CACHE or ~/.cache/infini_bench."""
    return Path(os.environ.get("INFINI_BENCH_CACHE", Path.home() / ".cache" / "infini_bench"))


@dataclass
class DataBundle:
    train: "object"                # datasets.Dataset
    validation: "object"
    tokenizer: "object"
    facts: list[Fact]
    info: dict = field(default_factory=dict)


def _num_passkey(config: DataConfig) -> int:
    return round(config.num_samples * config.passkey_fraction)


def _embedded_texts(config: DataConfig):
    # One document per sample; each word is at least one token, so sample_len words always suffice.
    return embedded_documents(config.num_samples - _num_passkey(config), config.seed, min_words=config.sample_len)


def _passkey_samples(config: DataConfig, tokenizer):
    pool = FillerPool.build(tokenizer, seed=config.seed)
    rng = random.Random(f"passkey-train-{config.seed}")
    ids, recall = zip(*(passkey_sample(tokenizer, pool, config.sample_len, rng) for _ in range(_num_passkey(config))))
    return {"input_ids": list(ids), "recall": list(recall)}


def _flag_recall(batch, tokenizer, sample_len):
    encoded = tokenizer(batch["text"], return_offsets_mapping=True, add_special_tokens=False)
    ids, recall = [], []
    for tokens, offsets, spans in zip(encoded["input_ids"], encoded["offset_mapping"], batch["recall_spans"]):
        tokens, offsets = tokens[:sample_len], offsets[:sample_len]
        ids.append(tokens)
        recall.append([int(any(s < span_end and e > span_start for span_start, span_end in spans))
                       for s, e in offsets])
    return {"input_ids": ids, "recall": recall}


def _packed(token_stream, sample_len, num_samples):
    """Cut a stream of token lists (documents, EOS-joined) into `num_samples` samples."""
    buffer, samples = [], []
    for tokens in token_stream:
        buffer.extend(tokens)
        while len(buffer) >= sample_len and len(samples) < num_samples:
            samples.append(buffer[:sample_len])
            buffer = buffer[sample_len:]
        if len(samples) == num_samples:
            break
    return samples


def _cache_key(config: DataConfig, kind, path, tokenizer) -> str:
    files = []
    if path:
        p = Path(path)
        for f in sorted(p.rglob("*") if p.is_dir() else [p]):
            if f.is_file():
                files.append([str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns])
    key = dict(version=CACHE_VERSION, kind=kind, files=files, tokenizer=tokenizer_fingerprint(tokenizer),
               num_samples=config.num_samples, sample_len=config.sample_len,
               passkey_fraction=config.passkey_fraction,
               seed=config.seed if kind == "embedded" or config.passkey_fraction else None)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def prepare_data(config: DataConfig, cache_dir: Path, tokenizer=None) -> DataBundle:
    """Samples for `config`; `tokenizer` (e.g. a checkpoint's own) replaces the configured one."""
    kind, path = parse_source(config.source)
    facts = reversal_facts(config.reversal_facts, seed=config.seed)
    docs = _embedded_texts(config) if kind == "embedded" else None
    if tokenizer is not None:
        tokenizer_name = getattr(tokenizer, "name_or_path", "") or "given"
    elif docs is not None:
        tokenizer_texts = [d["text"] for d in docs] + [f.forward for f in facts]
    else:
        # Enough raw text to train a tokenizer on, should one be needed (about 6 characters per token).
        budget, tokenizer_texts = config.num_samples * config.sample_len * 6, []
        if config.tokenizer in ("bpe", "pythia"):
            for text in stream_texts(kind, path):
                tokenizer_texts.append(text)
                budget -= len(text)
                if budget <= 0:
                    break
    if tokenizer is None:
        if config.passkey_fraction:  # the needle's and question's words in the tokenizer's vocabulary
            rng = random.Random(config.seed)
            tokenizer_texts += [NEEDLE.format(key=rng.randrange(10000, 100000)) + QUESTION for _ in range(100)]
        tokenizer, tokenizer_name = load_tokenizer(config.tokenizer, tokenizer_texts + [f.forward for f in facts],
                                                   config.vocab_size, cache_dir / "tokenizers")
    sample_dir = cache_dir / "samples" / _cache_key(config, kind, path, tokenizer)
    if not (sample_dir / "dataset_info.json").exists():
        if docs is not None:
            samples = Dataset.from_list(docs).map(
                _flag_recall, batched=True, remove_columns=["text", "recall_spans"],
                fn_kwargs=dict(tokenizer=tokenizer, sample_len=config.sample_len))
        else:
            eos = [tokenizer.eos_token_id]
            stream = (tokenizer(t, add_special_tokens=False)["input_ids"] + eos for t in stream_texts(kind, path))
            ids = _packed(stream, config.sample_len, config.num_samples - _num_passkey(config))
            samples = Dataset.from_dict({"input_ids": ids, "recall": [[0] * config.sample_len for _ in ids]})
        if config.passkey_fraction:
            samples = concatenate_datasets([samples, Dataset.from_dict(_passkey_samples(config, tokenizer))])
        short = [len(x) for x in samples["input_ids"] if len(x) < config.sample_len]
        if len(samples) < config.num_samples or short:
            raise ValueError(f"data: {config.source} gives only {len(samples)} full samples of {config.sample_len} "
                             f"tokens; num_samples asks for {config.num_samples}")
        with atomic_dir(sample_dir) as tmp:
            samples.save_to_disk(str(tmp))
    samples = load_from_disk(str(sample_dir))

    order = list(range(len(samples)))
    random.Random(config.seed).shuffle(order)
    num_val = max(1, round(config.val_fraction * len(order)))
    validation = samples.select(sorted(order[:num_val]))
    train = samples.select(order[num_val:])
    reversal = reversal_samples(facts, tokenizer, config)
    if reversal:
        train = concatenate_datasets([train, Dataset.from_dict(
            {"input_ids": reversal, "recall": [[0] * config.sample_len for _ in reversal]})])
    info = dict(source=config.source, kind=kind, tokenizer=tokenizer_name, vocab_size=len(tokenizer),
                train_samples=len(train), validation_samples=len(validation), reversal_samples=len(reversal),
                passkey_samples=_num_passkey(config),
                sample_len=config.sample_len, cache=str(sample_dir), config=asdict(config))
    return DataBundle(train, validation, tokenizer, facts, info)


def reversal_samples(facts, tokenizer, config: DataConfig) -> list[list[int]]:
    """Forward sentences, each `reversal_repeats` times, shuffled, EOS-joined and packed.

    The stream is cycled to fill the last sample, so a few sentences appear once more rather
    than padding it."""
    if not config.reversal_repeats:
        return []
    sentences = [f.forward for f in facts] * config.reversal_repeats
    random.Random(config.seed + 1).shuffle(sentences)
    eos = tokenizer.eos_token_id
    stream = [t for s in sentences for t in tokenizer(s, add_special_tokens=False)["input_ids"] + [eos]]
    count = -(-len(stream) // config.sample_len)
    stream = (stream * 2)[:count * config.sample_len]
    return [stream[i:i + config.sample_len] for i in range(0, len(stream), config.sample_len)]


def long_document(tokenizer, length: int, seed: int) -> list[int]:
    """One embedded-corpus document of `length` tokens: its people are stated at the start and
    recalled throughout, so that reading it well needs memory at every length."""
    text, _ = make_document(random.Random(f"long-{seed}"), min_words=length)
    return encode_long(tokenizer, text)[:length]
