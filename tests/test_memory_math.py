"""The fast memory op against the plain float64 reference (tests/reference_memory.py): outputs,
final state and gradients."""

import copy

import pytest
import torch

from infini_bench.models.memory import MemoryState, infini_attention, read_memory, write_memory
from reference_memory import reference_infini

B, H, D = 2, 3, 4
SEGMENT = 5


def random_inputs(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, length, D, generator=g, dtype=torch.float64) for _ in range(3))
    gate = torch.randn(H, generator=g, dtype=torch.float64)
    return q, k, v, gate


def random_beta(length, seed=0):
    """Write strengths in (0, 1) for rule delta_l2: [B, H, L]."""
    g = torch.Generator().manual_seed(seed + 100)
    return torch.sigmoid(torch.randn(B, H, length, generator=g, dtype=torch.float64))


def expansion_mlp(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(H * D, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)).double()


def fast(q, k, v, gate, num_memories, delta_rule, mlp=None, shared=False, stream_update="mean", bptt_segments=0,
         rule="infini", beta=None):
    length = q.shape[2]
    segments = -(-length // SEGMENT)
    pad = segments * SEGMENT - length
    valid = None
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = None if beta is None else torch.nn.functional.pad(beta, (0, pad), value=0.7)
        valid = torch.ones(B, segments * SEGMENT, dtype=torch.bool)
        valid[:, length:] = False
        valid = valid.view(B, segments, SEGMENT)
    q, k, v = (x.view(B, H, segments, SEGMENT, D) for x in (q, k, v))
    beta = None if beta is None else beta.view(B, H, segments, SEGMENT)

    def gate_fn(coarse):
        b, h, s, d = coarse.shape
        return torch.sigmoid(mlp(coarse.transpose(1, 2).reshape(b, s, h * d))).view(b, 1, s, 1)

    state = MemoryState.empty(1 if shared else B, H, num_memories, D, dtype=torch.float64,
                              normaliser=rule != "delta_l2")
    out, state = infini_attention(q, k, v, state, gate, delta_rule=delta_rule, stream_update=stream_update,
                                  expansion_gate=gate_fn if mlp else None, valid=valid, bptt_segments=bptt_segments,
                                  rule=rule, beta=beta)
    return out.reshape(B, H, segments * SEGMENT, D)[:, :, :length], state


def max_relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check(length, num_memories, delta_rule, hierarchical=False, shared=False, stream_update="mean", rule="infini"):
    q, k, v, gate = random_inputs(length, seed=num_memories + 10 * delta_rule)
    beta = random_beta(length) if rule == "delta_l2" else None
    mlp = expansion_mlp() if hierarchical else None
    out, state = fast(q, k, v, gate, num_memories, delta_rule, mlp, shared, stream_update, rule=rule, beta=beta)
    ref_out, ref_memory, ref_norm = reference_infini(q, k, v, gate, SEGMENT, num_memories, delta_rule, mlp,
                                                     shared, stream_update, rule=rule, beta=beta)
    assert max_relative_error(out, ref_out) <= 1e-6
    memory, norm = stacked(ref_memory, ref_norm)
    assert max_relative_error(state.memory, memory) <= 1e-6
    if rule == "delta_l2":  # no normaliser: the fast form stores none, the reference's stays zero
        assert state.norm.shape[-1] == 0 and not norm.any()
    else:
        assert max_relative_error(state.norm, norm) <= 1e-6
    assert state.writes == -(-length // SEGMENT)
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


@pytest.mark.parametrize("rule", ["gated_norm", "delta_l2"])
@pytest.mark.parametrize("kind,num_memories,delta_rule", [
    ("single", 1, True), ("single", 1, False), ("multi", 3, True), ("hierarchical", 3, True)])
def test_memory_rules_match_reference(rule, kind, num_memories, delta_rule):
    """Five segments, the last partial (padding), round robin wrapping over three memories; the
    delta_l2 reference writes token by token, the fast form solves each segment at once."""
    check(4 * SEGMENT + 3, num_memories, delta_rule, hierarchical=kind == "hierarchical", rule=rule)


@pytest.mark.parametrize("rule", ["gated_norm", "delta_l2"])
def test_memory_rules_shared_stream_memory_match_reference(rule):
    check(3 * SEGMENT + 1, 2, True, shared=True, rule=rule)


def test_gated_norm_stops_z_growing_for_stored_keys():
    """Writing the same keys twice: the paper's z doubles, gated_norm's z does not move (all
    sigma(k) are positive, so sigma(k_t) . z >= |sigma(k_t)|^2 once k_t is stored)."""
    q, k, v, _ = random_inputs(SEGMENT)
    sk = torch.nn.functional.elu(k) + 1
    for rule, growth in (("infini", 2.0), ("gated_norm", 1.0)):
        state = MemoryState.empty(B, H, 1, D, dtype=torch.float64)
        once = write_memory(sk, v, state, delta_rule=True, rule=rule)
        twice = write_memory(sk, v, once, delta_rule=True, rule=rule)
        torch.testing.assert_close(twice.norm, growth * once.norm)


def test_delta_l2_overwrites_a_key_with_beta_one():
    """DeltaNet's rule with beta = 1: reading a stored unit key returns its value, and writing a
    new value under the same key replaces the old one (the paper's rule would average them)."""
    g = torch.Generator().manual_seed(4)
    key = torch.nn.functional.normalize(torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64), dim=-1)
    first, second = (torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64) for _ in range(2))
    beta = torch.ones(1, 1, 1, dtype=torch.float64)
    state = MemoryState.empty(1, 1, 1, D, dtype=torch.float64, normaliser=False)
    state = write_memory(key, first, state, delta_rule=True, rule="delta_l2", beta=beta)
    torch.testing.assert_close(read_memory(key, state, None, rule="delta_l2"), first)
    state = write_memory(key, second, state, delta_rule=True, rule="delta_l2", beta=beta)
    torch.testing.assert_close(read_memory(key, state, None, rule="delta_l2"), second)


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


def gradients(form, inputs, mlp, num_memories, delta_rule, bptt_segments, seed=3, rule="infini"):
    """Gradients of a fixed random projection of the output and the final memory state with
    respect to q, k, v, the gate (and beta under delta_l2) and the expansion MLP's parameters,
    through one form."""
    if rule == "delta_l2":
        inputs = (*inputs, random_beta(inputs[0].shape[2]))
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    q, k, v, gate, *beta = leaves
    beta = beta[0] if beta else None
    mlp = copy.deepcopy(mlp)
    if form == "fast":
        out, state = fast(q, k, v, gate, num_memories, delta_rule, mlp, bptt_segments=bptt_segments, rule=rule,
                          beta=beta)
        memory, norm = state.memory, state.norm
    else:
        out, ref_memory, ref_norm = reference_infini(q, k, v, gate, SEGMENT, num_memories, delta_rule, mlp,
                                                     bptt_segments=bptt_segments, rule=rule, beta=beta)
        memory, norm = stacked(ref_memory, ref_norm)
    if rule == "delta_l2":
        norm = norm[..., :0]
    g = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in (out, memory, norm))
    loss.backward()
    named = dict(zip("q k v gate beta".split(), (x.grad for x in leaves)))
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


@pytest.mark.parametrize("rule", ["gated_norm", "delta_l2"])
@pytest.mark.parametrize("kind,num_memories", [("single", 1), ("multi", 3), ("hierarchical", 3)])
def test_memory_rule_gradients_match_reference(rule, kind, num_memories):
    """As above for the other memory rules, with truncation every 2 segments; under delta_l2 the
    gradient also reaches the write strengths beta."""
    inputs = random_inputs(4 * SEGMENT + 3, seed=30 + num_memories)
    mlp = expansion_mlp() if kind == "hierarchical" else None
    ours = gradients("fast", inputs, mlp, num_memories, True, 2, rule=rule)
    theirs = gradients("reference", inputs, mlp, num_memories, True, 2, rule=rule)
    assert set(ours) == set(theirs) and ("beta" in ours) == (rule == "delta_l2")
    for name in theirs:
        assert theirs[name].abs().max() > 0, name
        assert max_relative_error(ours[name], theirs[name]) <= 1e-6, name
