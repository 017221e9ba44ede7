"""The compressive-memory math of Infini-attention, in one place.

Per head, with sigma(x) = ELU(x) + 1, memory M (d x d) and normaliser z (d):
  retrieval   A_mem   = sigma(Q) M / (sigma(Q) z)           (denominator clamped at EPS)
  local       A_local = causal linear attention of sigma(Q), sigma(K), V inside the segment
  output      g * A_mem + (1 - g) * A_local,  g = sigmoid(gate) per head
  write       M += sigma(K)^T (V - sigma(K) M / (sigma(K) z))  with the delta rule,
              M += sigma(K)^T V without it;  z += sum_t sigma(k_t)
Multi memory: relevance_i = mean over positions of sigma(Q) z_i, softmax over the N memories,
A_mem = sum_i weight_i * retrieval_i; the k-th segment written goes to memory k mod N.
Hierarchical: a coarse memory C = sum_i M_i (z_C = sum_i z_i) is read as well, and a learned
expansion gate p mixes p * (multi-memory read) + (1 - p) * (coarse read).

Memory rules (`memory_rule`) change how M and z are written and read; the local part, the gate
and the round robin stay as above:
  "infini"      the paper's rule, above.
  "gated_norm"  the normaliser update of the Associative Recurrent Memory Transformer:
                z += sum_t gamma_t sigma(k_t), gamma_t = clip(1 - sigma(k_t) z / |sigma(k_t)|^2, 0, 1)
                from the memory before the segment, so z stops growing for keys already stored.
                gamma is detached, as in ARMT (it scales the write; it is not trained through).
  "delta_l2"    DeltaNet's rule: q^ = l2norm(SiLU(q)), k^ = l2norm(SiLU(k)) (FLA's DeltaNet
                defaults), no normaliser (z is not stored), A_mem = q^ M, and token by token
                within the segment M += beta_t k^_t^T (v_t - k^_t M), beta_t = sigmoid of a learned
                per-head projection. Computed chunkwise: with K^ the segment's keys and
                A = tril(K^ K^^T, -1), U = (I + diag(beta) A)^-1 diag(beta) (V - K^ M) and
                M += K^^T U, equal to the token-by-token loop. Multi memory: relevance_i = mean
                over positions of |q^ M_i|; hierarchical: the coarse read is q^ (mean_i M_i) (memories
                not yet written count as zeros in the mean). Sequence scope only: a
                shared stream memory would average the batch's writes (beta / batch size).

An empty memory has M = 0 and z = 0, so its retrieval is exactly zero and its relevance is
zero, as the reference requires, without a special case.

All N memories are read in one matmul over the stacked memories; the local part is the
quadratic masked form, batched over every segment of the call. Only the memory recurrence
loops, once per segment. `tests/reference_memory.py` holds the plain float64 form of the same
math, token by token, that this one is tested against.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def sigma(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


def memory_feature(rule: str, x: Tensor) -> Tensor:
    """Queries or keys [..., d] as the memory reads and writes them under `rule`."""
    if rule == "delta_l2":
        return F.normalize(F.silu(x), dim=-1)
    return sigma(x)


@dataclass
class MemoryState:
    """Memory of one Infini layer.

    memory [B, H, N, d, d] and norm [B, H, N, d] ([B, H, N, 0] under a rule without a
    normaliser); B is the batch size (a memory per row) or 1 (one memory shared by the batch:
    stream scope). `writes` counts the segments written, which picks the round-robin slot of
    the next write.
    """

    memory: Tensor
    norm: Tensor
    writes: int = 0

    @classmethod
    def empty(cls, batch: int, heads: int, num_memories: int, head_dim: int, device=None, dtype=torch.float32,
              normaliser: bool = True):
        memory = torch.zeros(batch, heads, num_memories, head_dim, head_dim, device=device, dtype=dtype)
        norm = torch.zeros(batch, heads, num_memories, head_dim if normaliser else 0, device=device, dtype=dtype)
        return cls(memory, norm, 0)

    def detach(self) -> "MemoryState":
        return MemoryState(self.memory.detach(), self.norm.detach(), self.writes)

    def to(self, device=None, dtype=None) -> "MemoryState":
        return MemoryState(self.memory.to(device=device, dtype=dtype), self.norm.to(device=device, dtype=dtype),
                           self.writes)


def local_linear_attention(sq: Tensor, sk: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Causal linear attention inside each segment, quadratic masked form.

    sq, sk, v: [..., S, d] (already through sigma); key_mask: [..., S] with 1 for real tokens.
    """
    scores = (sq @ sk.transpose(-1, -2)).tril()
    if key_mask is not None:
        scores = scores * key_mask.unsqueeze(-2)
    return (scores @ v) / scores.sum(-1, keepdim=True).clamp_min(EPS)


def _position_mean(x: Tensor, query_mask: Tensor | None) -> Tensor:
    """Mean of x [B, H, S, N] over the real positions -> [B, H, 1, N]; query_mask: [B, 1, S]."""
    if query_mask is None:
        return x.mean(-2, keepdim=True)
    mask = query_mask.unsqueeze(-1)                         # [B, 1, S, 1]
    return (x * mask).sum(-2, keepdim=True) / mask.sum(-2, keepdim=True).clamp_min(1)


def read_memory(mq: Tensor, state: MemoryState, expansion_gate: Callable[[Tensor], Tensor] | None,
                query_mask: Tensor | None = None, rule: str = "infini") -> Tensor:
    """A_mem for one segment. mq: [B, H, S, d] (memory features); query_mask: [B, 1, S]."""
    memory, norm = state.memory, state.norm                 # [B, H, N, d, d], [B, H, N, d]
    if rule == "delta_l2":
        reads = mq.unsqueeze(2) @ memory                    # [B, H, N, S, d]: q^ M_i
        weights = _position_mean(reads.norm(dim=-1).transpose(-1, -2), query_mask).softmax(-1)
        fine = (weights.transpose(-1, -2).unsqueeze(-1) * reads).sum(2)
        coarse = mq @ memory.mean(2) if expansion_gate is not None else None
    else:
        denominator = mq @ norm.transpose(-1, -2)           # [B, H, S, N]: sigma(q) . z_i
        relevance = _position_mean(denominator, query_mask)  # [B, H, 1, N]
        # sum_i w_i (sigma(q) M_i) / den_i as one matmul over the stacked memories:
        # [B, H, S, N*d] (row s holds w_i / den_i[s] * sigma(q_s) for each i) @ [B, H, N*d, d].
        coefficient = relevance.softmax(-1) / denominator.clamp_min(EPS)
        scaled_queries = (coefficient.unsqueeze(-1) * mq.unsqueeze(-2)).flatten(-2)
        fine = scaled_queries @ memory.flatten(2, 3)
        coarse = None
        if expansion_gate is not None:
            coarse_memory, coarse_norm = memory.sum(2), norm.sum(2)
            coarse = (mq @ coarse_memory) / (mq @ coarse_norm.unsqueeze(-1)).clamp_min(EPS)
    if expansion_gate is None:
        return fine
    p = expansion_gate(coarse)                              # [B, 1, S, 1]
    return p * fine + (1 - p) * coarse


def write_memory(mk: Tensor, v: Tensor, state: MemoryState, *, delta_rule: bool, stream_update: str = "mean",
                 key_mask: Tensor | None = None, rule: str = "infini", beta: Tensor | None = None) -> MemoryState:
    """Write one segment into the round-robin slot. mk, v: [B, H, S, d] (mk: memory features);
    key_mask: [B, 1, S]; beta: [B, H, S], the write strengths of rule "delta_l2".

    A state with batch size 1 written by B > 1 rows is one memory shared by the batch: the rows'
    updates are averaged. stream_update "reference" also divides M's update by the segment length."""
    num_memories = state.memory.shape[2]
    slot = state.writes % num_memories
    if key_mask is not None:
        mk = mk * key_mask.unsqueeze(-1)                    # a padded key writes nothing
    memory, norm = state.memory[:, :, slot], state.norm[:, :, slot]
    if rule == "delta_l2":
        # u_t = beta_t (v_t - k^_t M_{t-1}) for every t at once: a unit lower-triangular solve.
        lower = (mk @ mk.transpose(-1, -2)).tril(-1) * beta.unsqueeze(-1)
        eye = torch.eye(mk.shape[-2], dtype=mk.dtype, device=mk.device)
        u = torch.linalg.solve_triangular(eye + lower, beta.unsqueeze(-1) * (v - mk @ memory), upper=False,
                                          unitriangular=True)
        delta_memory = mk.transpose(-1, -2) @ u             # [B, H, d, d]
        delta_norm = mk[..., :0].sum(-2)                    # [B, H, 0]: no normaliser
    else:
        if delta_rule:
            v = v - (mk @ memory) / (mk @ norm.unsqueeze(-1)).clamp_min(EPS)
        delta_memory = mk.transpose(-1, -2) @ v            # [B, H, d, d]
        if rule == "gated_norm":
            stored = (mk @ norm.unsqueeze(-1)) / (mk * mk).sum(-1, keepdim=True).clamp_min(EPS)
            delta_norm = ((1 - stored).clamp(0, 1).detach() * mk).sum(-2)
        else:
            delta_norm = mk.sum(-2)                         # [B, H, d]
    if state.memory.shape[0] == 1 and mk.shape[0] > 1:
        delta_memory = delta_memory.mean(0, keepdim=True)
        delta_norm = delta_norm.mean(0, keepdim=True)
    if stream_update == "reference":
        length = mk.shape[-2] if key_mask is None else key_mask.sum(-1).amax()
        delta_memory = delta_memory / length
    if num_memories == 1:
        return MemoryState(state.memory + delta_memory.unsqueeze(2), state.norm + delta_norm.unsqueeze(2),
                           state.writes + 1)
    onehot = F.one_hot(torch.tensor(slot, device=mk.device), num_memories).to(mk.dtype)
    memory = state.memory + onehot.view(1, 1, -1, 1, 1) * delta_memory.unsqueeze(2)
    norm = state.norm + onehot.view(1, 1, -1, 1) * delta_norm.unsqueeze(2)
    return MemoryState(memory, norm, state.writes + 1)


def infini_attention(q: Tensor, k: Tensor, v: Tensor, state: MemoryState, gate: Tensor, *,
                     delta_rule: bool, stream_update: str = "mean",
                     expansion_gate: Callable[[Tensor], Tensor] | None = None,
                     valid: Tensor | None = None, bptt_segments: int = 0, rule: str = "infini",
                     beta: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """Infini-attention over T consecutive segments.

    q, k, v: [B, H, T, S, d]; gate: [H]; valid: [B, T, S] (1 for real tokens) or None;
    beta: [B, H, T, S] for rule "delta_l2".
    `state` has batch size B (a memory per row) or 1 (one memory shared by the batch).
    Each segment reads the memory as left by the segments before it, then writes itself.
    bptt_segments > 0 detaches the memory after every that many segments (truncated
    back-propagation through the memory); the forward values are unchanged.
    Returns the attention output [B, H, T, S, d] and the memory after the last segment.
    """
    mask = None if valid is None else valid.unsqueeze(1).to(q.dtype)   # [B, 1, T, S]
    local = local_linear_attention(sigma(q), sigma(k), v, mask)
    mq, mk = memory_feature(rule, q), memory_feature(rule, k)
    reads = []
    for t in range(q.shape[2]):
        mask_t = None if mask is None else mask[:, :, t]
        reads.append(read_memory(mq[:, :, t], state, expansion_gate, mask_t, rule))
        state = write_memory(mk[:, :, t], v[:, :, t], state, delta_rule=delta_rule, stream_update=stream_update,
                             key_mask=mask_t, rule=rule, beta=None if beta is None else beta[:, :, t])
        if bptt_segments and (t + 1) % bptt_segments == 0:
            state = state.detach()
    g = torch.sigmoid(gate).view(1, -1, 1, 1, 1)
    return g * torch.stack(reads, 2) + (1 - g) * local, state


def update_memory(k: Tensor, v: Tensor, state: MemoryState, *, delta_rule: bool, stream_update: str = "mean",
                  valid: Tensor | None = None, rule: str = "infini", beta: Tensor | None = None) -> MemoryState:
    """The memory after writing T segments, without reading it: what `infini_attention` returns
    as its state, for inputs whose outputs are not needed (the haystack of a long document).
    k, v: [B, H, T, S, d]; valid: [B, T, S] or None; beta: [B, H, T, S] for rule "delta_l2"."""
    mk = memory_feature(rule, k)
    mask = None if valid is None else valid.unsqueeze(1).to(k.dtype)
    for t in range(k.shape[2]):
        state = write_memory(mk[:, :, t], v[:, :, t], state, delta_rule=delta_rule, stream_update=stream_update,
                             key_mask=None if mask is None else mask[:, :, t], rule=rule,
                             beta=None if beta is None else beta[:, :, t])
    return state
