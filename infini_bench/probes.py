"""What the memory holds along a long input: probes of every Infini layer at the question.

A single-NIAH document (data/needles.py, the needle at depth 0: in the first segments) is read
segment by segment through the memory. Two spans of whole segments are followed: the needle's
segments and, as a control, as many haystack segments right after them (about the same
distance from the question, no needle). A span's *trace* is what it wrote (the memory's change
over the span), carried through every later write: each write is affine in the memory once its
keys, values, write strengths and normaliser are fixed, so the trace after a write is that
write's linear part applied to it (a delta rule subtracts what it retrieves, erasing part of
an older association; without one the trace stays as written). At the question's last token,
with the segment as the answer is scored (the answer tokens in it too: the weights over
memories average the segment's queries), per Infini layer, averaged over heads:

  needle_read_share, control_read_share   |A(T)| / (|A(T)| + |A(M - T)|) for the span's trace
                                 T: the memory read A is linear in M once its weights over
                                 memories (and p) are fixed. Read against each other: a memory
                                 that keeps the needle better than the haystack after it gives
                                 needle > control
  segment_share                  the span's share of the tokens written (what a memory that
                                 adds every token alike would give it in z)
  needle_norm_share              sigma(q) . dz / sigma(q) . z over the memories holding the
                                 needle: its part of the read's normaliser (z only grows, so
                                 under the paper's rule this falls like segment_share)
  memory_norm[i], norm_norm[i]   |M_i|_F and |z_i| of each memory (no z under delta_l2)
  selection_entropy, needle_weight   multi / hierarchical: entropy of the weights over memories
                                 (nats; uniform: ln N) and the weight on the memories holding
                                 the needle (uniform: their share of N)
  expansion_gate                 hierarchical: p, the weight of the fine (multi-memory) read
  memory_gate                    sigmoid(g): the memory read's weight against local attention
"""

import math

import torch

from .data.needles import SentencePool, needle_documents
from .evaluation import autocast_context, chunk_tokens
from .models.memory import EPS, MemoryState, memory_feature, write_memory

PROBE_FAMILY = "single"
PROBE_DEPTH = 0


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


def read_parts(attention, rule, mq_all, query, state, part_memory):
    """The memory read of query position `query` of a segment (memory features mq_all [H, S, d]),
    split into the part from `part_memory` [H, N, d, d] and the part from the rest of the
    memory `state` (batch 1) reads, with the read's weights over memories [H, N] (the segment's
    mean relevance, as the model computes it) and expansion gate p ([1, 1] or None). The parts
    sum to models/memory.py's read (tests/test_probes.py)."""
    mq = mq_all[:, query]
    memory, norm, part = state.memory[0].float(), state.norm[0].float(), part_memory.float()
    if rule == "delta_l2":
        relevance = torch.linalg.vector_norm(mq_all.unsqueeze(1) @ memory, dim=-1).mean(-1)
    else:
        relevance = (mq_all @ norm.transpose(-1, -2)).mean(-2)           # [H, N]
    weights = relevance.softmax(-1)
    p = None
    if attention.expansion_gate is not None:
        _, coarse = _reads(mq, memory, norm, weights, rule)
        p = attention.expansion_probability(coarse[None, :, None, :])[0, 0]
    return (_mixed(_reads(mq, part, norm, weights, rule), p), _mixed(_reads(mq, memory - part, norm, weights, rule), p),
            weights, p)


def carry_trace(trace, mk, v, before: MemoryState, config, beta=None):
    """A span's trace [1, H, N, d, d] after one more segment (keys mk, values v [1, H, S, d]) is
    written into `before`: the write's linear part applied to it (the same write with zero
    values and `before`'s normaliser)."""
    state = MemoryState(trace, before.norm, before.writes)
    return write_memory(mk, torch.zeros_like(v), state, delta_rule=config.use_delta_rule,
                        stream_update=config.stream_update, rule=config.memory_rule, beta=beta).memory


def _segment_inputs(model, layer_id, hidden, device, autocast_dtype):
    """Memory keys, values and write strengths [1, H, T, S, ...] of Infini layer `layer_id` from
    its input hidden [1, T * S, width], computed as the model computes them."""
    layer, seg = model.gpt_neox.layers[layer_id], model.config.segment_len
    with autocast_context(device, autocast_dtype):
        q, k, v, beta = layer.attention._qkv(layer.input_layernorm(hidden.view(1, -1, seg, hidden.shape[-1])))
    return q, memory_feature(model.config.memory_rule, k), v, beta


@torch.no_grad()
def probe_document(model, doc: dict, device, autocast_dtype=None) -> dict:
    """The probes of one single-NIAH document (with ids and needle_spans): {layer: {name: value}}."""
    c = model.config
    seg, layers = c.segment_len, c.infini_layer_ids()
    ids = torch.as_tensor(doc["ids"], dtype=torch.long)
    question = doc["first_target"] - 1                  # this position predicts the answer
    start, end = doc["needle_spans"][0]
    first, last, reader = start // seg * seg, -(-end // seg) * seg, question // seg * seg
    control_end = last + (last - first)
    assert control_end <= reader, "the needle's and the control's segments must end before the question's"
    spans = {"needle": (first, last), "control": (last, control_end)}
    state, marks, traces = list(model.empty_memory(1)), {}, {}
    chunk = chunk_tokens(model)
    for chunk_start in range(0, reader, chunk):
        piece = ids[chunk_start:min(chunk_start + chunk, reader)][None].to(device)
        with autocast_context(device, autocast_dtype):
            hidden = model(piece, memory_state=tuple(state), output_hidden_states=True).hidden_states
        for n, layer_id in enumerate(layers):
            _, mk, v, beta = _segment_inputs(model, layer_id, hidden[layer_id], device, autocast_dtype)
            for t in range(mk.shape[2]):
                at = chunk_start + t * seg
                b = None if beta is None else beta[:, :, t]
                for name, (span_start, span_end) in spans.items():
                    if at == span_start:
                        marks[name, n] = state[n]
                    if at == span_end:
                        traces[name, n] = state[n].memory - marks[name, n].memory
                    if at >= span_end:
                        traces[name, n] = carry_trace(traces[name, n], mk[:, :, t], v[:, :, t], state[n], c, b)
                state[n] = write_memory(mk[:, :, t], v[:, :, t], state[n], delta_rule=c.use_delta_rule,
                                        stream_update=c.stream_update, rule=c.memory_rule, beta=b)
    for name in spans:                             # a span that ends at the question's segment
        for n in range(len(layers)):
            traces.setdefault((name, n), state[n].memory - marks[name, n].memory)
    scored = ids[reader:reader + seg][None].to(device)   # the question's segment as the answer is scored
    with autocast_context(device, autocast_dtype):
        hidden = model(scored, memory_state=tuple(state), output_hidden_states=True).hidden_states
    needle_slots = sorted({j % c.num_memories for j in range(first // seg, last // seg)})
    probes = {}
    for n, layer_id in enumerate(layers):
        attention = model.gpt_neox.layers[layer_id].attention
        padded = torch.nn.functional.pad(hidden[layer_id], (0, 0, 0, seg - scored.shape[1]))
        q, *_ = _segment_inputs(model, layer_id, padded, device, autocast_dtype)
        mq_all = memory_feature(c.memory_rule, q[0, :, 0, :scored.shape[1]].float())   # [H, S, d]
        f = state[n]
        shares = {}
        for name in spans:
            part, rest, weights, p = read_parts(attention, c.memory_rule, mq_all, question - reader, f,
                                                traces[name, n][0])
            part, rest = (torch.linalg.vector_norm(x, dim=-1) for x in (part, rest))
            shares[name] = float((part / (part + rest).clamp_min(EPS)).mean())
        memory, norm, mq = f.memory[0].float(), f.norm[0].float(), mq_all[:, question - reader]
        values = {
            "tokens_written": reader,
            "needle_read_share": shares["needle"],
            "control_read_share": shares["control"],
            "segment_share": (last - first) / reader,
            "memory_norm": torch.linalg.matrix_norm(memory).mean(0).tolist(),
            "memory_gate": float(torch.sigmoid(attention.gate.float()).mean()),
        }
        if norm.shape[-1]:
            needle_norm = (marks["control", n].norm - marks["needle", n].norm)[0].float()[:, needle_slots]
            values["norm_norm"] = torch.linalg.vector_norm(norm, dim=-1).mean(0).tolist()
            values["needle_norm_share"] = float(((needle_norm.sum(1) * mq).sum(-1)
                                                 / (norm[:, needle_slots].sum(1) * mq).sum(-1).clamp_min(EPS)).mean())
        if c.num_memories > 1:
            values["selection_entropy"] = float(-(weights * weights.clamp_min(1e-30).log()).sum(-1).mean())
            values["entropy_uniform"] = math.log(c.num_memories)
            values["needle_weight"] = float(weights[:, needle_slots].sum(-1).mean())
            values["needle_weight_uniform"] = len(needle_slots) / c.num_memories
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
