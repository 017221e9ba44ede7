"""Evaluation metrics, one implementation for the suite and the lm-eval tasks.

- validation PPL, recall-token PPL and position-wise PPL from per-token losses of fixed-length
  samples, evaluated in order with the memory reset first (the reference protocol: in stream
  scope the memory is then carried from batch to batch);
- log-likelihood of continuations (lm-eval's `loglikelihood` request), used for reversal accuracy;
- reversal curse as the reference defines it (PPL of forward and backward sentences) and as
  accuracy (the right answer ranked first among distractors).
Position p of a loss is the index of the token the prediction is made from (the target is p + 1).
"""

import hashlib
import math
import time
from contextlib import nullcontext

import numpy as np
import torch

from .config import REFERENCE_BINS
from .data.needles import LOCAL, SentencePool, needle_documents
from .data.reversal import FACT_SETS, reversal_questions
from .data.tokenizer import encode_long
from .distributed import gather_rows, share

SCORE_ROWS = 128  # positions log-softmaxed at once when streaming (keeps vocab-sized buffers small)
LONG_CONTEXT_CHARS = 100_000  # a context this long is encoded once (encode_request)
LONG_CONTEXT_TAIL = 1_000     # characters of it encoded again with the continuation


def reset_memory(model):
    """Start from an empty stream memory (no-op for sequence scope and the baseline)."""
    if hasattr(model, "reset_memory"):
        model.reset_memory()


def autocast_context(device, dtype):
    """Autocast to `dtype` on `device` (bf16 on CUDA), or nothing when dtype is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def sample_token_nll(model, input_ids, batch_size: int, device, autocast_dtype=None) -> np.ndarray:
    """Per-token negative log-likelihood [N, L - 1] of fixed-length samples, in order.

    Under data parallelism each process scores a contiguous share of the samples (in stream
    scope through its own memory, reset at the share's start) and the shares are gathered back
    in order, every sample once. Every process makes as many forward calls as the largest
    share needs (a short share repeats a batch and drops its result): ZeRO-3 gathers the
    parameters inside each call, from all processes at once."""
    model.eval()
    reset_memory(model)
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    own, largest = share(len(ids))
    mine = ids[own.start:own.stop]
    out = [np.empty((0, ids.shape[1] - 1))]
    for start in range(0, largest, batch_size):
        batch = mine[start:start + batch_size]
        keep = len(batch)
        batch = (batch if keep else ids[:1]).to(device)
        with autocast_context(device, autocast_dtype):
            logits = model(batch).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch[:, 1:],
                                                reduction="none")
        out.append(nll[:keep].double().cpu().numpy())
    reset_memory(model)
    return gather_rows(np.concatenate(out), len(ids), device)


def bin_edges(bins, length: int) -> list[tuple[int, int]]:
    """(start, end) pairs: each bin runs to the next start, the last to `length`."""
    bins = sorted(b for b in bins if b < length)
    return list(zip(bins, [*bins[1:], length]))


def position_bins(bins, width: int, sample_len: int | None = None) -> list[tuple[str, int, int]]:
    """(label, start, end) of each position bin over losses of `width` positions; labels end at
    `sample_len` (the sample's length) for the last bin."""
    label_end = sample_len or width + 1
    return [(f"{start}-{label_end if end == width else end}", start, end) for start, end in bin_edges(bins, width)]


def lm_metrics(nll: np.ndarray, recall: np.ndarray | None, bins=REFERENCE_BINS, sample_len: int | None = None):
    """PPL overall, on recall tokens, and per position bin, from losses [N, L - 1].

    recall: [N, L] flags of the samples' tokens; a loss counts as recall when its target is one.
    """
    metrics = {"ppl": math.exp(nll.mean()), "samples": int(nll.shape[0]), "tokens": int(nll.size)}
    if recall is not None:
        target_recall = np.asarray(recall)[:, 1:].astype(bool)
        metrics["recall_tokens"] = int(target_recall.sum())
        metrics["recall_ppl"] = math.exp(nll[target_recall].mean()) if target_recall.any() else None
    metrics["position_ppl"] = {label: math.exp(nll[:, start:end].mean())
                               for label, start, end in position_bins(bins, nll.shape[1], sample_len)}
    return metrics


def per_sample_losses(nll: np.ndarray, recall, bins=REFERENCE_BINS, sample_len: int | None = None) -> dict:
    """The per-sample parts of `lm_metrics`, for paired bootstraps (every sample has the same
    number of losses): mean loss, recall-token loss sum and count, mean loss of each position bin."""
    target_recall = np.asarray(recall)[:, 1:].astype(bool)
    return {"nll": nll.mean(1).tolist(), "recall_nll": (nll * target_recall).sum(1).tolist(),
            "recall_tokens": target_recall.sum(1).tolist(),
            "position_nll": {label: nll[:, start:end].mean(1).tolist()
                             for label, start, end in position_bins(bins, nll.shape[1], sample_len)}}


def chunk_tokens(model) -> int:
    """Tokens fed per call when streaming a long input: whole segments, about 1,024 tokens."""
    segment = model.config.segment_len
    return segment * max(1, 1024 // segment)


@torch.no_grad()
def stream_logprobs(model, rows, device, autocast_dtype=None):
    """For each (tokens, first_target) row of any length: log p(tokens[t] | tokens[:t]) for
    t = first_target..n-1, and whether each was the argmax. The rows go through their memories
    together, in chunks of whole segments, right-padded to the longest: padding comes after a
    row's last token, so causality keeps it out of the row's predictions, and each row's result
    equals one call on that row alone. Logits are kept only where some row needs them and chunks
    are built as they are fed, so memory use stays flat however long the inputs are."""
    model.eval()
    chunk = chunk_tokens(model)
    firsts = [max(first_target, 1) for _, first_target in rows]
    ends = [len(tokens) for tokens, _ in rows]
    # Results go into arrays made once: small per-chunk results kept between the chunks'
    # large temporary buffers would fragment the heap and make memory grow with the length.
    results = [(np.empty(max(end - first, 0)), np.empty(max(end - first, 0), dtype=bool))
               for first, end in zip(firsts, ends)]
    # Position p predicts token p + 1: positions min(firsts) - 1 .. width - 2 are scored.
    first_position, width = min(firsts) - 1, max(ends)
    state = model.empty_memory(len(rows))
    for start in range(0, width - 1, chunk):
        piece = torch.zeros((len(rows), min(chunk, width - start)), dtype=torch.long)
        for r, (tokens, _) in enumerate(rows):
            part = tokens[start:start + piece.shape[1]]
            piece[r, :len(part)] = torch.as_tensor(part, dtype=torch.long)
        end = start + piece.shape[1]
        low = max(first_position, start)   # the chunk's first position whose logits are needed
        if end <= low:   # nothing to predict here: only write the memory
            with autocast_context(device, autocast_dtype):
                state = model.update_memory(piece.to(device), state)
            continue
        with autocast_context(device, autocast_dtype):
            out = model(piece.to(device), memory_state=state, logits_to_keep=end - low)
        state, logits = out.memory_state, out.logits
        del out  # the last chunk's logits are gone before the next chunk's are made
        for r, (tokens, _) in enumerate(rows):
            logprobs, greedy = results[r]
            for at in range(max(firsts[r] - 1, low), min(ends[r] - 1, end), SCORE_ROWS):
                # log-softmax some positions at a time: smaller buffers
                block = logits[r, at - low:min(at + SCORE_ROWS, ends[r] - 1, end) - low].float()
                targets = torch.as_tensor(tokens[at + 1:at + 1 + len(block)], dtype=torch.long).to(block.device)
                lp = torch.log_softmax(block, -1)
                done = at - (firsts[r] - 1)
                logprobs[done:done + len(block)] = lp.gather(-1, targets[:, None])[:, 0].double().cpu().numpy()
                greedy[done:done + len(block)] = (lp.argmax(-1) == targets).cpu().numpy()
        del logits
    return results


@torch.no_grad()
def greedy_generate(model, tokens, max_new_tokens: int, stop, device, autocast_dtype=None) -> list[int]:
    """Greedy continuation of `tokens`; `stop(new_tokens)` ends it early.

    Infini models: the context goes through the memory segment by segment; each step re-reads
    only the unfinished segment on top of the memory of the finished ones, so a step costs at
    most one segment whatever the context length. GPT-NeoX: transformers' `generate` with its
    KV cache, the context cut to the last max_position_embeddings - max_new_tokens tokens."""
    model.eval()
    if not hasattr(model, "empty_memory"):
        keep = max(model.config.max_position_embeddings - max_new_tokens, 1)
        ids = torch.tensor([tokens[-keep:]], device=device)
        with autocast_context(device, autocast_dtype):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=model.config.eos_token_id or 0)
        new = out[0, ids.shape[1]:].tolist()
        return next((new[:k] for k in range(1, len(new) + 1) if stop(new[:k])), new)
    segment = model.config.segment_len
    done = (len(tokens) - 1) // segment * segment    # leave at least one token unfinished
    state = model.empty_memory(1)
    for start in range(0, done, chunk_tokens(model)):
        piece = torch.tensor([tokens[start:min(start + chunk_tokens(model), done)]], device=device)
        with autocast_context(device, autocast_dtype):
            state = model.update_memory(piece, state)
    tail, new = list(tokens[done:]), []
    while len(new) < max_new_tokens:
        with autocast_context(device, autocast_dtype):
            out = model(torch.tensor([tail], device=device), memory_state=state, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        new.append(token)
        if stop(new):
            break
        tail.append(token)
        if len(tail) > segment:
            with autocast_context(device, autocast_dtype):
                state = model.update_memory(torch.tensor([tail[:segment]], device=device), state)
            tail = tail[segment:]
    return new


@torch.no_grad()
def score_tokens(model, rows, batch_size: int, device, autocast_dtype=None, memory=None):
    """For each (tokens, first_target): log p(tokens[t] | tokens[:t]) for t = first_target..n-1,
    and whether each target was the argmax.

    Rows are right-padded into batches of similar length; every row has its own empty memory
    (also in stream scope), or reads `memory` (a shared one, e.g. `warm_memory`'s; rows of at
    most one segment only: the memory is read, and what they write is dropped), so results do
    not depend on batching. Rows longer than a streaming
    chunk are fed through the memory chunk by chunk (Infini models only)."""
    model.eval()
    results = [None] * len(rows)
    infini = hasattr(model, "empty_memory")
    # A model without memory is fed each row but its last token (no prediction is made from it),
    # so a row may hold max_position_embeddings + 1 tokens, as lm-eval's windows do.
    drop = 0 if infini else 1
    limit = chunk_tokens(model) if infini else model.config.max_position_embeddings
    short, long = [], []
    for i, (tokens, first_target) in enumerate(rows):
        if len(tokens) - drop <= limit:
            short.append(i)
        elif infini:
            long.append(i)
        else:
            raise ValueError(f"input of {len(tokens) - drop} tokens is longer than the model's "
                             f"max_position_embeddings ({limit}); window it first")
    long.sort(key=lambda i: -len(rows[i][0]))
    for start in range(0, len(long), batch_size):   # long rows streamed together, similar lengths
        batch = long[start:start + batch_size]
        for i, result in zip(batch, stream_logprobs(model, [rows[i] for i in batch], device, autocast_dtype)):
            results[i] = result
    short.sort(key=lambda i: -len(rows[i][0]))
    for start in range(0, len(short), batch_size):
        chunk = short[start:start + batch_size]
        width = max(len(rows[i][0]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, :len(rows[i][0])] = torch.tensor(rows[i][0])
            mask[row, :len(rows[i][0]) - drop] = 1
        if memory is not None and width > model.config.segment_len:
            raise ValueError(f"a shared memory is read by rows of one segment only; got {width} tokens")
        state = {"memory_state": model.empty_memory(len(chunk)) if memory is None else memory} if infini else {}
        with autocast_context(device, autocast_dtype):
            logits = model(ids[:, :width - drop].to(device), attention_mask=mask[:, :width - drop].to(device),
                           **state).logits
        logprobs = torch.log_softmax(logits.float(), -1).cpu()
        for row, i in enumerate(chunk):
            tokens, first_target = rows[i]
            targets = ids[row, first_target:len(tokens)]
            predicted = logprobs[row, first_target - 1:len(tokens) - 1]
            results[i] = (predicted.gather(-1, targets[:, None])[:, 0].double().numpy(),
                          (predicted.argmax(-1) == targets).numpy())
    return results


def encode_request(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """lm-eval's causal encoding: encode the whole text, split where the context's encoding ends;
    an empty context becomes the EOS token. A context long enough for `encode_long` to cut it
    anyway is encoded once: all but its last piece (cut before a space, as `encode_long` cuts),
    then that piece alone and with the continuation, which gives the same tokens."""
    if not context:
        return [tokenizer.eos_token_id] + encode_long(tokenizer, continuation), 1
    cut = context.rfind(" ", 0, len(context) - LONG_CONTEXT_TAIL) if len(context) > LONG_CONTEXT_CHARS else -1
    if cut <= 0:
        return encode_long(tokenizer, context + continuation), len(encode_long(tokenizer, context))
    head, tail = encode_long(tokenizer, context[:cut]), context[cut:]
    return head + encode_long(tokenizer, tail + continuation), len(head) + len(encode_long(tokenizer, tail))


def loglikelihoods(model, tokenizer, requests, batch_size: int, device, autocast_dtype=None, memory=None):
    """lm-eval `loglikelihood`: for each (context, continuation), the summed log-probability of
    the continuation and whether it is the greedy choice; `memory`: see `score_tokens`."""
    rows = [encode_request(tokenizer, c, x) for c, x in requests]
    return [(float(lp.sum()), bool(greedy.all()))
            for lp, greedy in score_tokens(model, rows, batch_size, device, autocast_dtype, memory)]


def sentence_losses(model, tokenizer, sentences, batch_size: int, device, autocast_dtype=None,
                    memory=None) -> np.ndarray:
    """Each sentence's mean token loss after EOS, its first token being context only (as the
    sentences are trained: data/reversal.py); the reference's reversal PPL is exp of their mean."""
    rows = [([tokenizer.eos_token_id] + tokenizer(s, add_special_tokens=False)["input_ids"], 2) for s in sentences]
    return np.array([-lp.mean() for lp, _ in score_tokens(model, rows, batch_size, device, autocast_dtype, memory)])


@torch.no_grad()
def warm_memory(model, input_ids, batch_size: int, device, autocast_dtype=None):
    """The stream-scope memory after reading `input_ids` (held-out samples) in batches of
    `batch_size`, as training carries it from batch to batch: one memory shared by the batch."""
    model.eval()
    state = model.empty_memory(1, shared=True)
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    for start in range(0, len(ids), batch_size):
        with autocast_context(device, autocast_dtype):
            state = model.update_memory(ids[start:start + batch_size].to(device), state)
    return state


def ranked_first(scores, answer: int = 0) -> float:
    """1 if `answer` alone has the highest score, 1/k if it is one of k tied for the highest
    (a tie is then neither a win nor a loss for the answer, whatever its position), else 0."""
    top = np.flatnonzero(np.asarray(scores) == np.max(scores))
    return float(answer in top) / len(top)


def reversal_metrics(model, tokenizer, facts, num_distractors: int, batch_size: int, device, autocast_dtype,
                     seed: int, memory=None) -> dict:
    """Sentence PPL (the reference's definition) and ranking accuracy of the trained and the
    control facts (data/reversal.py), forward and backward; keys without a prefix are the
    trained facts', `control_` ones the control facts'. `items` holds each fact's sentence loss,
    correctness (`ranked_first`), the scores of its choices and their fact indices (for the
    leaderboard's intervals and permutation test); `seed`: the suite's; `memory`: one that
    every question reads (a warmed stream memory), else each reads an empty memory of its own."""
    device = torch.device(device)
    metrics = {"facts": len(facts["trained"]), "control_facts": len(facts["control"]),
               "distractors": num_distractors, "score": "summed log-probability"}
    items = {}
    for which in FACT_SETS:
        prefix = "" if which == "trained" else f"{which}_"
        for direction in ("forward", "backward"):
            losses = sentence_losses(model, tokenizer, [getattr(f, direction) for f in facts[which]], batch_size,
                                     device, autocast_dtype, memory)
            questions = reversal_questions(facts[which], direction, num_distractors, seed, which, tokenizer.eos_token)
            requests = [(q["prompt"], choice) for q in questions for choice in q["choices"]]
            scores = iter(lp for lp, _ in loglikelihoods(model, tokenizer, requests, batch_size, device,
                                                         autocast_dtype, memory))
            options = [[next(scores) for _ in q["choices"]] for q in questions]
            correct = [ranked_first(row) for row in options]
            metrics[f"{prefix}{direction}_ppl"] = math.exp(losses.mean())
            metrics[f"{prefix}{direction}_acc"] = float(np.mean(correct))
            items[f"{prefix}{direction}_nll"] = losses.tolist()
            items[f"{prefix}{direction}_correct"] = correct
            items[f"{prefix}{direction}_scores"] = options   # the choices' scores, the answer's first
            items[f"{prefix}{direction}_candidates"] = [q["facts"] for q in questions]
    metrics["ppl_gap"] = metrics["backward_ppl"] - metrics["forward_ppl"]
    metrics["reversal_effect"] = metrics["backward_acc"] - metrics["control_backward_acc"]
    return {**metrics, "items": items}


def context_limit(model) -> int | None:
    """Longest input a model can read: none for Infini models, max_position_embeddings otherwise."""
    return None if hasattr(model, "empty_memory") else model.config.max_position_embeddings


def window_request(row: tuple[list[int], int], limit: int) -> tuple[list[int], int]:
    """A (tokens, first_target) request cut to its last `limit` + 1 tokens: a model that reads
    only its last `limit` tokens predicts the last target from them (as lm-eval cuts a request
    to a model's context); the targets are kept whole."""
    tokens, first_target = row
    cut = max(len(tokens) - limit - 1, 0)
    if first_target - cut < 1:
        raise ValueError(f"a continuation of {len(tokens) - first_target} tokens does not fit a window of {limit}")
    return tokens[cut:], first_target - cut


def retrieval_cell(model, tokenizer, rows, batch_size: int, device, autocast_dtype=None) -> dict:
    """Scores of one cell's documents as their lm-eval request is scored: correct when every
    answer token is the greedy choice, with the answer's log-probability. A model with a context
    limit reads each document's last `context_limit` tokens (the floor: a window, no memory)."""
    requests = [(r["ids"], r["first_target"]) if "ids" in r else encode_request(tokenizer, r["context"], r["target"])
                for r in rows]
    limit = context_limit(model)
    if limit is not None:
        requests = [window_request(r, limit) for r in requests]
    scored = score_tokens(model, requests, batch_size, device, autocast_dtype)
    return {"correct": [int(greedy.all()) for _, greedy in scored],
            "answer_logprob": [float(lp.sum()) for lp, _ in scored],
            "distance": [r["distance"] for r in rows],
            "documents": [hashlib.sha256((r["context"] + r["target"]).encode()).hexdigest()[:12] for r in rows]}


def retrieval_grid(model, tokenizer, evaluation, device, autocast_dtype, seed: int, progress=None) -> dict:
    """Every cell of `evaluation.retrieval` (family x haystack x length x depth, the local
    control as depth LOCAL) on the documents of the infini_niah / infini_vt tasks: per cell the
    documents' correctness, answer log-probabilities and needle distances (data/needles.py).
    `progress(cell, seconds)` is told when each (family, haystack, length) is done."""
    device = torch.device(device)
    cells, pools = [], {}
    for family, haystack, length in evaluation.retrieval_cells():
        start = time.perf_counter()
        if haystack not in pools:   # each haystack's sentences tokenized once, not once per cell and depth
            pools[haystack] = SentencePool.build(tokenizer, seed, "evaluation", haystack)
        # One depth's documents at a time: a million-token document's ids are large.
        for depth in evaluation.depths_at(length):
            rows = needle_documents(tokenizer, family, haystack, length, [depth], evaluation.retrieval_docs, seed,
                                    evaluation.needle_gap, with_ids=True, pool=pools[haystack])
            cells.append({"family": family, "haystack": haystack, "length": length, "depth": str(depth),
                          **retrieval_cell(model, tokenizer, rows, evaluation.batch_size, device, autocast_dtype)})
        if progress:
            progress((family, haystack, length), time.perf_counter() - start)
    limit = context_limit(model)
    return {"reader": "memory" if limit is None else f"last {limit}", "context_limit": limit,
            "depths": list(map(str, [*evaluation.retrieval_depths, *([LOCAL] if evaluation.local_control else [])])),
            "docs_per_cell": evaluation.retrieval_docs,
            "needle_gap": evaluation.needle_gap, "cells": cells}


@torch.no_grad()
def recall_ppl(model, tokens, spans, bins, batch_size: int, device="cpu", autocast_dtype=None) -> dict:
    """PPL of the recall tokens of a fact-recall document (data.recall_document), binned by
    distance since the fact was stated, with each recall's summed loss and token count (for
    intervals over recalls). Infini models read the whole document through their memory; a
    model with a context limit predicts each recall from the last `context_limit` tokens before
    it (the floor)."""
    device = torch.device(device)
    limit = context_limit(model)
    if limit is None:
        ((logprobs, _),) = stream_logprobs(model, [(tokens, spans[0][0])], device, autocast_dtype)
        losses = [float(-logprobs[start - spans[0][0]:end - spans[0][0]].sum()) for start, end, _ in spans]
    else:
        rows = [window_request((list(tokens[:end]), start), limit) for start, end, _ in spans]
        losses = [float(-lp.sum()) for lp, _ in score_tokens(model, rows, batch_size, device, autocast_dtype)]
    recalls = [{"distance": d, "nll": loss, "tokens": end - start} for (start, end, d), loss in zip(spans, losses)]
    binned = {}
    for low, high in bin_edges(bins, len(tokens)):
        inside = [r for r in recalls if low <= r["distance"] < high]
        binned[f"{low}-{high}"] = (math.exp(sum(r["nll"] for r in inside) / sum(r["tokens"] for r in inside))
                                   if inside else None)
    return {"tokens": len(tokens), "context_limit": limit, "recall_ppl": binned, "recalls": recalls}
