"""What the memory holds along a long input: probes of every Infini layer at the question.

A single-NIAH document (data/needles.py, the needle at depth 0: in the first segments) is
written into the memory segment by segment, keeping the memory before and after the needle's
segments. At the question's last token (the one that predicts the answer), per Infini layer,
averaged over heads:

  memory_norm[i], norm_norm[i]   |M_i|_F and |z_i| of each memory, after everything before the
                                 question's segment (no z under delta_l2)
  needle_read_share              |A(dM)| / (|A(dM)| + |A(M - dM)|): the memory read A is linear
                                 in M once its weights over memories (and p) are fixed; dM is
                                 the memory's change over the needle's segments (the needle's
                                 association as written), M - dM everything else
  needle_norm_share              sigma(q) . dz / sigma(q) . z: the needle's part of the read's
                                 normaliser (the paper's rule: about 1 / tokens written)
  token_share                    the needle's share of the tokens written: what the needle gets
                                 from a memory that holds every token alike
  selection_entropy, needle_weight   multi / hierarchical: entropy of the weights over memories
                                 (nats; uniform: ln N) and the weight on the memories holding
                                 the needle (uniform: their share of N)
  expansion_gate                 hierarchical: p, the weight of the fine (multi-memory) read
  memory_gate                    sigmoid(g): the memory read's weight against local attention
"""

import math

import torch

from .data.needles import SentencePool, needle_documents
from .evaluation import _autocast, chunk_tokens
from .models.memory import EPS, memory_feature

PROBE_FAMILY = "single"
PROBE_DEPTH = 0


def _write(model, ids, state, device, autocast_dtype):
    """The memory after writing `ids` (whole segments, a chunk at a time) on top of `state`."""
    chunk = chunk_tokens(model)
    for start in range(0, len(ids), chunk):
        with _autocast(device, autocast_dtype):
            state = model.update_memory(ids[start:start + chunk][None].to(device), state)
    return state


def _reads(mq, memory, norm, weights, rule):
    """The fine (weighted over memories) and coarse reads [H, d] of one query mq [H, d] from
    `memory` [H, N, d, d] with fixed weights [H, N] and the denominators of `norm` [H, N, d]
    (none under delta_l2), as models/memory.py reads them."""
    reads = (mq[:, None, None, :] @ memory)[:, :, 0]                        # [H, N, d]: q M_i
    if rule == "delta_l2":
        return (weights.unsqueeze(-1) * reads).sum(1), reads.mean(1)
    denominator = (norm @ mq.unsqueeze(-1))[..., 0]                          # [H, N]: q . z_i
    fine = (weights.unsqueeze(-1) * reads / denominator.clamp_min(EPS).unsqueeze(-1)).sum(1)
    return fine, reads.sum(1) / denominator.sum(1, keepdim=True).clamp_min(EPS)


def _mixed(reads, p):
    fine, coarse = reads
    return fine if p is None else p * fine + (1 - p) * coarse


def read_parts(attention, rule, mq_all, state, needle_memory):
    """The memory read of the segment's last query, split into the part from `needle_memory`
    (the needle's association as written) and the part from everything else, with the read's
    weights over memories [H, N] and expansion gate p ([1, 1] or None); mq_all: the segment's
    memory features [H, S, d], state: the memory it reads (batch 1). The parts sum to the read
    of models/memory.py (tests/test_probes.py)."""
    mq = mq_all[:, -1]
    memory, norm, needle = state.memory[0].float(), state.norm[0].float(), needle_memory.float()
    if rule == "delta_l2":
        relevance = torch.linalg.vector_norm(mq_all.unsqueeze(1) @ memory, dim=-1).mean(-1)
    else:
        relevance = (mq_all @ norm.transpose(-1, -2)).mean(-2)           # [H, N]
    weights = relevance.softmax(-1)
    p = None
    if attention.expansion_gate is not None:
        _, coarse = _reads(mq, memory, norm, weights, rule)
        p = attention.expansion_probability(coarse[None, :, None, :])[0, 0]
    return (_mixed(_reads(mq, needle, norm, weights, rule), p), _mixed(_reads(mq, memory - needle, norm, weights, rule), p),
            weights, p)


@torch.no_grad()
def probe_document(model, doc: dict, device, autocast_dtype=None) -> dict:
    """The probes of one single-NIAH document (with ids and needle_spans): {layer: {name: value}}."""
    c = model.config
    seg, rule = c.segment_len, c.memory_rule
    ids = torch.as_tensor(doc["ids"], dtype=torch.long)
    question = doc["first_target"] - 1                  # this position predicts the answer
    start, end = doc["needle_spans"][0]
    first, last, reader = start // seg * seg, -(-end // seg) * seg, question // seg * seg
    assert last <= reader, "the needle's segments must end before the question's"
    before = _write(model, ids[:first], model.empty_memory(1), device, autocast_dtype)
    after = _write(model, ids[first:last], before, device, autocast_dtype)
    final = _write(model, ids[last:reader], after, device, autocast_dtype)
    with _autocast(device, autocast_dtype):
        hidden = model(ids[reader:question + 1][None].to(device), memory_state=final,
                       output_hidden_states=True).hidden_states
    needle_slots = sorted({j % c.num_memories for j in range(first // seg, last // seg)})
    probes = {}
    for layer_id, b, a, f in zip(c.infini_layer_ids(), before, after, final):
        layer = model.gpt_neox.layers[layer_id]
        normed = layer.input_layernorm(hidden[layer_id].to(layer.input_layernorm.weight.dtype))
        q = layer.attention._qkv(normed.unsqueeze(1))[0]                # [1, H, 1, S, d]
        mq_all = memory_feature(rule, q[0, :, 0].float())                 # [H, S, d]
        needle_read, rest_read, weights, p = read_parts(layer.attention, rule, mq_all, f, (a.memory - b.memory)[0])
        signal, rest = (torch.linalg.vector_norm(x, dim=-1) for x in (needle_read, rest_read))
        mq, memory, norm = mq_all[:, -1], f.memory[0].float(), f.norm[0].float()
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
        values = {
            "tokens_read": reader,
            "memory_norm": torch.linalg.matrix_norm(memory).mean(0).tolist(),
            "needle_read_share": float((signal / (signal + rest).clamp_min(EPS)).mean()),
            "token_share": (end - start) / reader,
            "memory_gate": float(torch.sigmoid(layer.attention.gate.float()).mean()),
        }
        if norm.shape[-1]:
            needle_norm = (a.norm - b.norm)[0].float()
            values["norm_norm"] = torch.linalg.vector_norm(norm, dim=-1).mean(0).tolist()
            values["needle_norm_share"] = float(((needle_norm.sum(1) * mq).sum(-1)
                                                 / (norm.sum(1) * mq).sum(-1).clamp_min(EPS)).mean())
        if c.num_memories > 1:
            values["selection_entropy"] = float(entropy.mean())
            values["needle_weight"] = float(weights[:, needle_slots].sum(-1).mean())
            values["needle_weight_uniform"] = len(needle_slots) / c.num_memories
            values["entropy_uniform"] = math.log(c.num_memories)
        if p is not None:
            values["expansion_gate"] = float(p.mean())
        probes[str(layer_id)] = values
    return probes


def probe_memory(model, tokenizer, evaluation, device, autocast_dtype, seed: int) -> dict:
    """The probes of `evaluation.probe_docs` single-NIAH documents of each `probe_lengths`
    (the retrieval grid's own documents at depth 0): {length: {layer: {probe: [per document]}}}."""
    device = torch.device(device)
    model.eval()
    pool = SentencePool.build(tokenizer, seed, "evaluation", evaluation.probe_haystack)
    lengths = {}
    for length in sorted(evaluation.probe_lengths):
        docs = needle_documents(tokenizer, PROBE_FAMILY, evaluation.probe_haystack, length, [PROBE_DEPTH],
                                evaluation.probe_docs, seed, evaluation.needle_gap, with_ids=True, pool=pool)
        per_doc = [probe_document(model, doc, device, autocast_dtype) for doc in docs]
        lengths[str(length)] = {layer: {name: [d[layer][name] for d in per_doc] for name in per_doc[0][layer]}
                                for layer in per_doc[0]}
    return {"family": PROBE_FAMILY, "haystack": evaluation.probe_haystack, "depth": PROBE_DEPTH,
            "docs_per_length": evaluation.probe_docs, "memory_rule": model.config.memory_rule, "lengths": lengths}
