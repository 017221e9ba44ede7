"""Evaluation metrics, one implementation for the suite and the lm-eval tasks.

- validation PPL, recall-token PPL and position-wise PPL from per-token losses of fixed-length
  samples, evaluated in order with the memory reset first (the reference protocol: in stream
  scope the memory is then carried from batch to batch);
- log-likelihood of continuations (lm-eval's `loglikelihood` request), used for reversal accuracy;
- reversal curse as the reference defines it (PPL of forward and backward sentences) and as
  accuracy (the right answer ranked first among distractors).
Position p of a loss is the index of the token the prediction is made from (the target is p + 1).
"""

import math
from contextlib import nullcontext

import numpy as np
import torch

REFERENCE_BINS = (0, 16, 32, 64, 96)


def reset_memory(model):
    """Start from an empty stream memory (no-op for sequence scope and the baseline)."""
    if hasattr(model, "reset_memory"):
        model.reset_memory()


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def sample_token_nll(model, input_ids, batch_size: int, device, autocast_dtype=None) -> np.ndarray:
    """Per-token negative log-likelihood [N, L - 1] of fixed-length samples, in order."""
    model.eval()
    reset_memory(model)
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    out = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size].to(device)
        with _autocast(device, autocast_dtype):
            logits = model(batch).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch[:, 1:],
                                                reduction="none")
        out.append(nll.double().cpu().numpy())
    reset_memory(model)
    return np.concatenate(out)


def bin_edges(bins, length: int) -> list[tuple[int, int]]:
    """(start, end) pairs: each bin runs to the next start, the last to `length`."""
    bins = sorted(b for b in bins if b < length)
    return list(zip(bins, [*bins[1:], length]))


def lm_metrics(nll: np.ndarray, recall: np.ndarray | None, bins=REFERENCE_BINS, sample_len: int | None = None):
    """PPL overall, on recall tokens, and per position bin, from losses [N, L - 1].

    recall: [N, L] flags of the samples' tokens; a loss counts as recall when its target is one.
    """
    metrics = {"ppl": math.exp(nll.mean()), "tokens": int(nll.size)}
    if recall is not None:
        target_recall = np.asarray(recall)[:, 1:].astype(bool)
        metrics["recall_tokens"] = int(target_recall.sum())
        metrics["recall_ppl"] = math.exp(nll[target_recall].mean()) if target_recall.any() else None
        metrics["nonrecall_ppl"] = math.exp(nll[~target_recall].mean())
    label_end = sample_len or nll.shape[1] + 1
    positions = {}
    for start, end in bin_edges(bins, nll.shape[1]):
        label = f"{start}-{label_end if end == nll.shape[1] else end}"
        positions[label] = math.exp(nll[:, start:end].mean())
    metrics["position_ppl"] = positions
    return metrics


@torch.no_grad()
def token_logprobs(model, token_lists, batch_size: int, device, autocast_dtype=None):
    """For each token list: log p(t_{i+1} | t_0..t_i) for i = 0..n-2, and whether each target was
    the argmax. Rows are right-padded into batches of similar length; every row has its own empty
    memory (also in stream scope), so results do not depend on batching."""
    model.eval()
    results = [None] * len(token_lists)
    order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(token_lists[i]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, :len(token_lists[i])] = torch.tensor(token_lists[i])
            mask[row, :len(token_lists[i])] = 1
        memory = {"memory_state": model.empty_memory(len(chunk))} if hasattr(model, "empty_memory") else {}
        with _autocast(device, autocast_dtype):
            logits = model(ids.to(device), attention_mask=mask.to(device), **memory).logits
        logprobs = torch.log_softmax(logits.float(), -1).cpu()
        for row, i in enumerate(chunk):
            n = len(token_lists[i])
            targets = ids[row, 1:n]
            predicted = logprobs[row, :n - 1]
            results[i] = (predicted.gather(-1, targets[:, None])[:, 0].double().numpy(),
                          (predicted.argmax(-1) == targets).numpy())
    return results


def loglikelihoods(model, tokenizer, requests, batch_size: int, device, autocast_dtype=None):
    """lm-eval `loglikelihood`: for each (context, continuation), the summed log-probability of
    the continuation and whether it is the greedy choice."""
    encoded = []
    for context, continuation in requests:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        context_len = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        if not context_len:
            whole, context_len = [tokenizer.eos_token_id] + whole, 1
        encoded.append((whole, context_len))
    scored = token_logprobs(model, [w for w, _ in encoded], batch_size, device, autocast_dtype)
    return [(float(lp[c - 1:].sum()), bool(greedy[c - 1:].all())) for (_, c), (lp, greedy) in zip(encoded, scored)]


def sentence_ppl(model, tokenizer, sentences, batch_size: int, device, autocast_dtype=None) -> float:
    """The reference's reversal PPL: exp(mean over sentences of each sentence's mean token loss)."""
    tokens = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    scored = token_logprobs(model, tokens, batch_size, device, autocast_dtype)
    return math.exp(np.mean([-lp.mean() for lp, _ in scored]))


def reversal_metrics(model, tokenizer, facts, num_distractors: int = 10, batch_size: int = 16, device="cpu",
                     autocast_dtype=None, seed: int = 0) -> dict:
    """Forward / backward sentence PPL (reference definition) and ranking accuracy."""
    from .data.reversal import distractors

    device = torch.device(device)
    metrics = {"facts": len(facts), "distractors": num_distractors}
    for direction in ("forward", "backward"):
        metrics[f"{direction}_ppl"] = sentence_ppl(model, tokenizer, [getattr(f, direction) for f in facts],
                                                   batch_size, device, autocast_dtype)
        requests, groups = [], []
        for i, fact in enumerate(facts):
            prompt, answer = getattr(fact, f"{direction}_query")()
            options = [answer] + distractors(facts, i, direction, num_distractors, seed)
            groups.append(len(options))
            requests.extend((prompt, option) for option in options)
        scores = [lp for lp, _ in loglikelihoods(model, tokenizer, requests, batch_size, device, autocast_dtype)]
        correct, at = [], 0
        for size in groups:
            group = scores[at:at + size]
            correct.append(int(np.argmax(group) == 0))
            at += size
        metrics[f"{direction}_acc"] = float(np.mean(correct))
        metrics[f"{direction}_acc_stderr"] = float(np.std(correct, ddof=1) / math.sqrt(len(correct)))
    metrics["ppl_gap"] = metrics["backward_ppl"] - metrics["forward_ppl"]
    return metrics
