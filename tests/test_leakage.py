"""No held-out text reaches training: every stage of the shipped suites, both device profiles.

A training sample leaks when it shares a window of 128 tokens (of the shortest sample, if a
stage's samples are shorter) with a validation or test sample of any stage (curriculum stages feed one model, so a stage-2 training document that is a prefix
of a stage-3 validation document is leakage). The reversal facts' invented words are never a
word of the corpus, and the tokenizer is trained on training text only.
"""

import dataclasses
import re

import numpy as np
import pytest

from infini_bench.data import SPLITS, _corpus_documents, prepare_data, split_sizes
from infini_bench.data.reversal import RELATIONS
from infini_bench.pipeline import stage_data
from infini_bench.suites import load_run_config

WINDOW = 128
BASE = np.uint64(1_000_003)


def window_hashes(samples, window=WINDOW) -> np.ndarray:
    """[samples, windows]: a 64-bit rolling hash of every window of `window` tokens (the whole
    sample if shorter)."""
    a = np.asarray(list(samples), dtype=np.uint64)
    width = min(window, a.shape[1])
    prefix = np.zeros((a.shape[0], a.shape[1] + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(a.shape[1]):
            prefix[:, k + 1] = prefix[:, k] * BASE + a[:, k]
        power = np.uint64(1)
        for _ in range(width):
            power = power * BASE
        return prefix[:, width:] - prefix[:, :-width] * power


def stage_configs(suite, device, scale):
    """The data config of the suite and of each curriculum stage, sizes divided by `scale`."""
    config = load_run_config(suite, device)
    data = dataclasses.replace(config.data, num_samples=max(50, config.data.num_samples // scale))
    stages = [stage_data(data, {**s, "num_samples": max(50, s["num_samples"] // scale)})
              for s in config.training.curriculum]
    return data, stages


CASES = [("core", "cpu", 1), ("core-seq", "cpu", 1), ("long", "cpu", 1),
         ("core", "cuda", 20), ("core-seq", "cuda", 20), ("long", "cuda", 100)]


@pytest.mark.parametrize("suite,device,scale", CASES, ids=[f"{s}-{d}" for s, d, _ in CASES])
def test_no_training_window_in_validation_or_test(tmp_path, suite, device, scale):
    data_config, stage_configs_ = stage_configs(suite, device, scale)
    window = min(WINDOW, *(c.sample_len for c in [data_config, *stage_configs_]))  # every sample holds one
    data = prepare_data(data_config, tmp_path)
    bundles = [data] + [prepare_data(c, tmp_path, tokenizer=data.tokenizer) for c in stage_configs_]
    held_out = np.unique(np.concatenate([window_hashes(getattr(b, split)["input_ids"], window).ravel()
                                         for b in bundles for split in ("validation", "test")]))
    leaked = sum(int(np.isin(window_hashes(b.train["input_ids"], window), held_out).any(1).sum()) for b in bundles)
    assert leaked == 0, f"{leaked} training samples share a {window}-token window with a held-out sample"

    corpus_words = set()
    for config in [data_config, *stage_configs_]:
        for split, n in split_sizes(config).items():
            for doc in _corpus_documents(config, split, n):
                corpus_words |= set(re.findall(r"[A-Z][a-z]+", doc["text"]))
    invented = {w for facts in data.facts.values() for f in facts
                for w in re.findall(r"[A-Z][a-z]+", f"{f.name} {f.thing}")}
    assert invented and not invented & corpus_words
    # The control facts are never trained: none of their words is in a training sample.
    train_text = data.tokenizer.decode([t for ids in data.train["input_ids"] for t in ids])
    frames = {w for template in RELATIONS.values() for w in re.findall(r"[A-Z][a-z]+", template)}
    control = {w for f in data.facts["control"] for w in re.findall(r"[A-Z][a-z]+", f"{f.name} {f.thing}")} - frames
    assert control and not control & set(re.findall(r"[A-Z][a-z]+", train_text))


def test_tokenizer_is_trained_on_training_text_only(tmp_path, monkeypatch):
    from infini_bench import data as data_module
    from infini_bench.data import DataConfig

    seen = []
    real = data_module.load_tokenizer
    monkeypatch.setattr(data_module, "load_tokenizer",
                        lambda spec, texts, *a: seen.extend(texts) or real(spec, texts, *a))
    config = DataConfig(num_samples=60, sample_len=64, tokenizer="bpe", vocab_size=400, reversal_facts=33)
    prepare_data(config, tmp_path)
    seen = set(seen)
    documents = {split: [d["text"] for d in _corpus_documents(config, split, split_sizes(config)[split])]
                 for split in SPLITS}
    assert all(text in seen for text in documents["train"])
    assert not seen & set(documents["validation"] + documents["test"])


def test_leakage_check_finds_a_shared_window():
    """The check itself can fail: a training sample that holds a held-out window is caught."""
    rng = np.random.default_rng(0)
    held = rng.integers(0, 2000, (3, 512))
    train = np.concatenate([rng.integers(0, 2000, 100), held[1, 200:328], rng.integers(0, 2000, 100)])
    assert np.isin(window_hashes([train]), window_hashes(held)).any()
    assert not np.isin(window_hashes([rng.integers(0, 2000, 328)]), window_hashes(held)).any()
