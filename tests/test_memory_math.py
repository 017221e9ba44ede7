"""The fast memory op against the plain float64 reference (tests/reference_memory.py): outputs,
final state and gradients."""

import copy

import pytest
import torch

from infini_bench.models.memory import MemoryState, infini_attention
from reference_memory import reference_infini

B, H, D = 2, 3, 4
SEGMENT = 5


def random_inputs(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, length, D, generator=g, dtype=torch.float64) for _ in range(3))
    gate = torch.randn(H, generator=g, dtype=torch.float64)
    return q, k, v, gate


def expansion_mlp(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(H * D, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)).double()


def fast(q, k, v, gate, num_memories, delta_rule, mlp=None, shared=False, stream_update="mean", bptt_segments=0):
    length = q.shape[2]
    segments = -(-length // SEGMENT)
    pad = segments * SEGMENT - length
    valid = None
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        valid = torch.ones(B, segments * SEGMENT, dtype=torch.bool)
        valid[:, length:] = False
        valid = valid.view(B, segments, SEGMENT)
    q, k, v = (x.view(B, H, segments, SEGMENT, D) for x in (q, k, v))

    def gate_fn(coarse):
        b, h, s, d = coarse.shape
        return torch.sigmoid(mlp(coarse.transpose(1, 2).reshape(b, s, h * d))).view(b, 1, s, 1)

    state = MemoryState.empty(1 if shared else B, H, num_memories, D, dtype=torch.float64)
    out, state = infini_attention(q, k, v, state, gate, delta_rule=delta_rule, stream_update=stream_update,
                                  expansion_gate=gate_fn if mlp else None, valid=valid, bptt_segments=bptt_segments)
    return out.reshape(B, H, segments * SEGMENT, D)[:, :, :length], state


def max_relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check(length, num_memories, delta_rule, hierarchical=False, shared=False, stream_update="mean"):
    q, k, v, gate = random_inputs(length, seed=num_memories + 10 * delta_rule)
    mlp = expansion_mlp() if hierarchical else None
    out, state = fast(q, k, v, gate, num_memories, delta_rule, mlp, shared, stream_update)
    ref_out, ref_memory, ref_norm = reference_infini(q, k, v, gate, SEGMENT, num_memories, delta_rule, mlp,
                                                     shared, stream_update)
    assert max_relative_error(out, ref_out) <= 1e-6
    memory = torch.stack([torch.stack([torch.stack(m) for m in row]) for row in ref_memory])
    norm = torch.stack([torch.stack([torch.stack(z) for z in row]) for row in ref_norm])
    assert max_relative_error(state.memory, memory) <= 1e-6
    assert max_relative_error(state.norm, norm) <= 1e-6
    assert state.writes == -(-length // SEGMENT)
    # The memory did something: the output differs from purely local attention with an empty memory.
    return out


@pytest.mark.parametrize("delta_rule", [True, False])
def test_single_matches_reference(delta_rule):
    check(3 * SEGMENT, 1, delta_rule)


@pytest.mark.parametrize("delta_rule", [True, False])
@pytest.mark.parametrize("num_memories", [1, 2, 4, 16])
def test_multi_matches_reference(num_memories, delta_rule):
    # More segments than memories where it is cheap, so round-robin wraps around.
    segments = max(3, num_memories + 1) if num_memories <= 4 else 3
    check(segments * SEGMENT, num_memories, delta_rule)


@pytest.mark.parametrize("delta_rule", [True, False])
def test_hierarchical_matches_reference(delta_rule):
    check(5 * SEGMENT, 4, delta_rule, hierarchical=True)


@pytest.mark.parametrize("stream_update", ["mean", "reference"])
def test_shared_stream_memory_matches_reference(stream_update):
    check(3 * SEGMENT, 2, True, shared=True, stream_update=stream_update)


def test_partial_last_segment_matches_reference():
    check(3 * SEGMENT + 2, 2, True)


def test_memory_changes_output_after_first_segment():
    """With the memory read, later segments differ from a run whose memory is never written."""
    q, k, v, gate = random_inputs(3 * SEGMENT)
    out, _ = fast(q, k, v, gate, 1, True)
    no_memory = torch.cat([fast(q[:, :, s:s + SEGMENT], k[:, :, s:s + SEGMENT], v[:, :, s:s + SEGMENT], gate, 1,
                                True)[0] for s in range(0, 3 * SEGMENT, SEGMENT)], 2)
    assert torch.allclose(out[:, :, :SEGMENT], no_memory[:, :, :SEGMENT])
    assert (out[:, :, SEGMENT:] - no_memory[:, :, SEGMENT:]).abs().max() > 1e-3


def stacked(ref_memory, ref_norm):
    """The reference's [row][head][memory] lists as tensors shaped like MemoryState's."""
    memory = torch.stack([torch.stack([torch.stack(m) for m in row]) for row in ref_memory])
    norm = torch.stack([torch.stack([torch.stack(z) for z in row]) for row in ref_norm])
    return memory, norm


def gradients(form, inputs, mlp, num_memories, delta_rule, bptt_segments, seed=3):
    """Gradients of a fixed random projection of the output and the final memory state with
    respect to q, k, v, the gate and the expansion MLP's parameters, through one form."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    mlp = copy.deepcopy(mlp)
    if form == "fast":
        out, state = fast(*leaves, num_memories, delta_rule, mlp, bptt_segments=bptt_segments)
        memory, norm = state.memory, state.norm
    else:
        out, ref_memory, ref_norm = reference_infini(*leaves, SEGMENT, num_memories, delta_rule, mlp,
                                                     bptt_segments=bptt_segments)
        memory, norm = stacked(ref_memory, ref_norm)
    g = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in (out, memory, norm))
    loss.backward()
    named = dict(zip("q k v gate".split(), (x.grad for x in leaves)))
    if mlp is not None:
        named.update({f"mlp.{n}": p.grad for n, p in mlp.named_parameters()})
    return named


@pytest.mark.parametrize("bptt_segments", [0, 2])
@pytest.mark.parametrize("delta_rule", [True, False])
@pytest.mark.parametrize("kind,num_memories", [("single", 1), ("multi", 3), ("hierarchical", 3)])
def test_gradients_match_reference(kind, num_memories, delta_rule, bptt_segments):
    """Five segments: round robin wraps (3 memories) and truncation (every 2 segments) cuts
    inside the call; the last segment is partial, so padding is masked in the backward pass too."""
    inputs = random_inputs(4 * SEGMENT + 3, seed=20 + num_memories)
    mlp = expansion_mlp() if kind == "hierarchical" else None
    ours = gradients("fast", inputs, mlp, num_memories, delta_rule, bptt_segments)
    theirs = gradients("reference", inputs, mlp, num_memories, delta_rule, bptt_segments)
    assert set(ours) == set(theirs) and (kind != "hierarchical" or len(ours) == 8)
    for name in theirs:
        assert theirs[name].abs().max() > 0, name  # every input really reaches the loss
        assert max_relative_error(ours[name], theirs[name]) <= 1e-6, name
    if bptt_segments:  # truncation changes the gradients it is meant to change
        untruncated = gradients("reference", inputs, mlp, num_memories, delta_rule, 0)
        assert max_relative_error(theirs["k"], untruncated["k"]) > 1e-3
