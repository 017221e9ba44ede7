"""Data and metrics of the infini_bench lm-eval tasks; all data is generated locally.

The tasks are handed lm-eval's `--model_args` as metadata. With `pretrained=<run dir>`, the
data is exactly the suite's: the run's data config (run_config.json) and the run's own
tokenizer give the same test samples, reversal facts and retrieval documents that the
leaderboard used. Any other local checkpoint (`--model hf --model_args pretrained=<folder>`)
gets the documented defaults of infini_bench/config.py (DataConfig, EvalConfig: seed 42,
depths 0/25/50/75 and the local control, 20 documents a depth, a 512-token needle gap) with
its own tokenizer.
"""

import json
import math
from functools import cache
from pathlib import Path

from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from infini_bench.config import RETRIEVAL_DEPTHS, REFERENCE_BINS, DataConfig, EvalConfig
from infini_bench.data import default_cache_dir, prepare_data
from infini_bench.data.needles import LOCAL, needle_documents
from infini_bench.data.reversal import reversal_facts, reversal_questions
from infini_bench.evaluation import bin_edges

@cache
def _run(pretrained: str | None):
    """(DataConfig, tokenizer, EvalConfig) of a run directory (the ones it recorded, so that the
    tasks score the leaderboard's data) or of another checkpoint (the defaults)."""
    if not pretrained:
        raise ValueError("infini_bench tasks need --model_args pretrained=<run dir or checkpoint>")
    data, evaluation = DataConfig(), EvalConfig()
    run_config = Path(pretrained) / "run_config.json"
    if run_config.exists():
        recorded = json.loads(run_config.read_text())
        data, evaluation = DataConfig(**recorded["data"]["config"]), EvalConfig(**recorded["run"]["evaluation"])
    return data, AutoTokenizer.from_pretrained(pretrained), evaluation


def _dataset(rows):
    return DatasetDict({"test": Dataset.from_list(rows)})


# ---------- position-wise PPL ----------

def positional_dataset(pretrained=None, position_bins=REFERENCE_BINS, **kwargs):
    """One loglikelihood request per (test sample, position bin): the context is the
    sample up to the bin, the continuation the bin's tokens (targets of positions start..end-1)."""
    config, tokenizer, _ = _run(pretrained)
    samples = prepare_data(config, default_cache_dir(), tokenizer=tokenizer).test["input_ids"]
    rows = []
    for sample_id, ids in enumerate(samples):
        for start, end in bin_edges(position_bins, len(ids) - 1):
            rows.append({"sample": sample_id, "bin": start, "tokens": end - start,
                         "context": tokenizer.decode(ids[:start + 1]),
                         "continuation": tokenizer.decode(ids[start + 1:end + 1])})
    return _dataset(rows)


def positional_results(doc, results):
    (loglikelihood, _), = results
    metrics = {f"ppl_pos_{b}": None for b in REFERENCE_BINS}
    metrics[f"ppl_pos_{doc['bin']}"] = (loglikelihood, doc["tokens"])
    return metrics


def token_ppl(items):
    """exp(total negative log-likelihood / total tokens) over the docs that have this bin."""
    items = [x for x in items if x is not None]
    if not items:
        return float("nan")
    return math.exp(-sum(ll for ll, _ in items) / sum(n for _, n in items))


# ---------- reversal ----------

def _reversal_facts(pretrained, facts):
    config, _, _ = _run(pretrained)
    return config, reversal_facts(config.reversal_facts, config.reversal_relations, seed=config.seed)[facts]


def reversal_dataset(direction, facts="trained", pretrained=None, **kwargs):
    """Multiple choice: the fact's answer in `direction` ("forward" or "backward") among
    distractors, for the run's trained or control facts; the questions the leaderboard asks."""
    config, tokenizer, evaluation = _run(pretrained)
    _, chosen = _reversal_facts(pretrained, facts)
    return _dataset(reversal_questions(chosen, direction, evaluation.num_distractors, config.seed, facts,
                                       tokenizer.eos_token))


def reversal_sentences(direction, facts="trained", pretrained=None, **kwargs):
    """The whole sentence in `direction`, after EOS and scored after its first token (the
    reference's sentence PPL, as `infini_bench.evaluation.sentence_losses` scores it)."""
    _, tokenizer, _ = _run(pretrained)
    _, chosen = _reversal_facts(pretrained, facts)
    rows = []
    for fact in chosen:
        ids = tokenizer(getattr(fact, direction), add_special_tokens=False)["input_ids"]
        rows.append({"context": tokenizer.eos_token + tokenizer.decode(ids[:1]), "continuation": tokenizer.decode(ids[1:]),
                     "tokens": len(ids) - 1})
    return _dataset(rows)


def sentence_results(doc, results):
    (loglikelihood, _), = results
    return {"ppl": -loglikelihood / doc["tokens"]}


def mean_loss_ppl(losses):
    """exp(mean over sentences of each sentence's mean token loss)."""
    return math.exp(sum(losses) / len(losses))


# ---------- needle-in-a-haystack retrieval ----------

def niah_dataset(family, length, pretrained=None, haystack="filler", depths=None, docs_per_depth=None, seed=None,
                 gap=None, **kwargs):
    """Haystacks of `length` tokens (by the model's tokenizer) with the needles of `family` at
    each depth and the local control (up to evaluation.local_control_max_length); the request asks
    for the answer after the haystack.
    Depths, documents per depth, needle gap and seed: the run's own (evaluation.retrieval_depths,
    retrieval_docs, needle_gap, data.seed) unless given."""
    config, tokenizer, evaluation = _run(pretrained)
    return _dataset(needle_documents(tokenizer, family, haystack, length, evaluation.depths_at(length, depths),
                                     docs_per_depth or evaluation.retrieval_docs, config.seed if seed is None else seed,
                                     gap or evaluation.needle_gap))


def niah_results(doc, results):
    (loglikelihood, greedy), = results
    metrics = {f"acc_depth_{d}": None for d in RETRIEVAL_DEPTHS}  # the template's metrics
    local = doc["depth"] == LOCAL
    metrics.update({"acc": None if local else float(greedy), "answer_logprob": None if local else loglikelihood,
                    "acc_local": float(greedy) if local else None})
    if not local and int(doc["depth"]) in RETRIEVAL_DEPTHS:
        metrics[f"acc_depth_{doc['depth']}"] = float(greedy)
    return metrics


def mean_present(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")
