"""Plain reference of the Infini-attention memory math (docs/reference-experiment.md), loop by loop.

Written for clarity, not speed: explicit loops over batch rows, segments, positions, heads
and memories, in whatever dtype the inputs have (the tests use float64). The fast form in
`infini_bench.models.memory` is checked against this.
"""

import torch

EPS = 1e-6


def sig(x):
    return torch.nn.functional.elu(x) + 1.0


def feature(rule, x):
    """The memory's feature map of one query or key vector: sigma, or l2norm(SiLU(x)) for delta_l2."""
    if rule == "delta_l2":
        x = torch.nn.functional.silu(x)
        return x / torch.clamp(torch.sqrt((x * x).sum()), min=1e-12)
    return sig(x)


def _read(sq_t, memory, norm, rule="infini"):
    """sigma(q) M / max(sigma(q) z, EPS) for one position and one memory (q^ M for delta_l2)."""
    if rule == "delta_l2":
        return sq_t @ memory
    return (sq_t @ memory) / torch.clamp(sq_t @ norm, min=EPS)


def reference_infini(q, k, v, gate, segment_len, num_memories, delta_rule, expansion_mlp=None,
                     shared=False, stream_update="mean", bptt_segments=0, rule="infini", beta=None):
    """q, k, v: [B, H, L, d]; gate: [H]; expansion_mlp: hidden -> 1 (hierarchical) or None;
    bptt_segments > 0: the memory is detached after every that many segments written (gradients
    reach back through the memory across at most that many segments; values are unchanged);
    rule: "infini", "gated_norm" or "delta_l2" (then beta [B, H, L] are the write strengths and
    the memory is written token by token; norm stays all zeros, the fast form does not store it).

    Returns the attention output [B, H, L, d] and the final (memory, norm) lists, indexed
    [row][head][memory] (a single row when `shared`).
    """
    batch, heads, length, d = q.shape
    rows = 1 if shared else batch
    memory = [[[torch.zeros(d, d, dtype=q.dtype) for _ in range(num_memories)] for _ in range(heads)]
              for _ in range(rows)]
    norm = [[[torch.zeros(d, dtype=q.dtype) for _ in range(num_memories)] for _ in range(heads)]
            for _ in range(rows)]
    out = torch.zeros_like(q)
    g = torch.sigmoid(gate)
    writes = 0
    for start in range(0, length, segment_len):
        positions = range(start, min(start + segment_len, length))
        for b in range(batch):
            r = 0 if shared else b
            # Relevance of each memory: mean over positions of sigma(q) . z_i.
            weights = []
            for h in range(heads):
                relevance = torch.zeros(num_memories, dtype=q.dtype)
                for i in range(num_memories):
                    for t in positions:
                        mq_t = feature(rule, q[b, h, t])
                        if rule == "delta_l2":
                            relevance[i] += torch.linalg.vector_norm(mq_t @ memory[r][h][i])  # gradient 0 at 0
                        else:
                            relevance[i] += mq_t @ norm[r][h][i]
                    relevance[i] /= len(positions)
                weights.append(torch.softmax(relevance, 0))
            for t in positions:
                reads, coarse_reads = [], []
                for h in range(heads):
                    mq_t = feature(rule, q[b, h, t])
                    fine = sum(weights[h][i] * _read(mq_t, memory[r][h][i], norm[r][h][i], rule)
                               for i in range(num_memories))
                    reads.append(fine)
                    if expansion_mlp is not None:
                        coarse_memory = sum(memory[r][h][i] for i in range(num_memories))
                        if rule == "delta_l2":
                            coarse_reads.append(mq_t @ (coarse_memory / num_memories))
                        else:
                            coarse_norm = sum(norm[r][h][i] for i in range(num_memories))
                            coarse_reads.append(_read(mq_t, coarse_memory, coarse_norm))
                if expansion_mlp is not None:
                    p = torch.sigmoid(expansion_mlp(torch.cat(coarse_reads)))[0]
                    reads = [p * reads[h] + (1 - p) * coarse_reads[h] for h in range(heads)]
                for h in range(heads):
                    sq_t = sig(q[b, h, t])
                    numerator = torch.zeros(d, dtype=q.dtype)
                    denominator = torch.zeros((), dtype=q.dtype)
                    for i in positions:
                        if i > t:
                            break
                        score = sq_t @ sig(k[b, h, i])
                        numerator += score * v[b, h, i]
                        denominator += score
                    local = numerator / torch.clamp(denominator, min=EPS)
                    out[b, h, t] = g[h] * reads[h] + (1 - g[h]) * local
        # Write the segment into memory `writes mod N`, from the memory as it was before.
        slot = writes % num_memories
        updates = [[(torch.zeros(d, d, dtype=q.dtype), torch.zeros(d, dtype=q.dtype)) for _ in range(heads)]
                   for _ in range(batch)]
        for b in range(batch):
            r = 0 if shared else b
            for h in range(heads):
                delta_memory, delta_norm = updates[b][h]
                written = memory[r][h][slot]  # delta_l2: the memory as written so far, token by token
                for t in positions:
                    sk_t = feature(rule, k[b, h, t])
                    value = v[b, h, t]
                    if rule == "delta_l2":
                        step = beta[b, h, t] * torch.outer(sk_t, value - sk_t @ written)
                        written = written + step
                        delta_memory += step
                        continue
                    if delta_rule:
                        value = value - _read(sk_t, memory[r][h][slot], norm[r][h][slot])
                    delta_memory += torch.outer(sk_t, value)
                    if rule == "gated_norm":
                        stored = (sk_t @ norm[r][h][slot]) / torch.clamp(sk_t @ sk_t, min=EPS)
                        delta_norm += torch.clamp(1 - stored, 0, 1).detach() * sk_t
                    else:
                        delta_norm += sk_t
        for b in range(batch):
            r = 0 if shared else b
            for h in range(heads):
                delta_memory, delta_norm = updates[b][h]
                if shared:
                    scale = batch * (len(positions) if stream_update == "reference" else 1)
                    memory[r][h][slot] = memory[r][h][slot] + delta_memory / scale
                    norm[r][h][slot] = norm[r][h][slot] + delta_norm / batch
                else:
                    memory[r][h][slot] = memory[r][h][slot] + delta_memory
                    norm[r][h][slot] = norm[r][h][slot] + delta_norm
        writes += 1
        if bptt_segments and writes % bptt_segments == 0:
            memory = [[[m.detach() for m in heads_] for heads_ in row] for row in memory]
            norm = [[[z.detach() for z in heads_] for heads_ in row] for row in norm]
    return out, memory, norm
