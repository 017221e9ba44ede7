"""Memory probes (infini_bench/probes.py): the two parts a probe splits a read into sum to the
model's own read; every probe is there for each memory type and rule; under the paper's rule
the needle's share of the normaliser falls as more is written."""

import functools

import numpy as np
import pytest
import torch

from helpers import needle_tokenizer, tiny_model
from infini_bench.config import EvalConfig
from infini_bench.models.memory import MemoryState, memory_feature, read_memory, write_memory
from infini_bench.probes import carry_trace, probe_memory, read_parts

CASES = [("single", 1, "infini"), ("multi", 3, "gated_norm"), ("hierarchical", 3, "infini"),
         ("multi", 3, "delta_l2"), ("hierarchical", 2, "delta_l2")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return needle_tokenizer(tmp_path_factory.mktemp("cache"))


def tiny(tokenizer, memory_type, num_memories, rule):
    return tiny_model(memory_type, num_memories, vocab=len(tokenizer), memory_rule=rule, segment_len=16)


@pytest.mark.parametrize("memory_type,num_memories,rule", CASES)
def test_read_parts_sum_to_the_models_read(tokenizer, memory_type, num_memories, rule):
    model = tiny(tokenizer, memory_type, num_memories, rule)
    ids = torch.randint(0, len(tokenizer), (1, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        needle = model.update_memory(ids[:, :32], model.empty_memory(1))[0]
        state = model.update_memory(ids[:, 32:], (needle,))[0]
        attention = model.gpt_neox.layers[0].attention
        mq_all = memory_feature(rule, torch.randn(attention.num_heads, 16, attention.head_dim,
                                                  generator=torch.Generator().manual_seed(1)))
        needle_read, rest_read, weights, p = read_parts(attention, rule, mq_all, 15, state, needle.memory[0])
        gate = attention.expansion_probability if attention.expansion_gate is not None else None
        read = read_memory(mq_all[None], state, gate, None, rule)[0, :, -1]
    torch.testing.assert_close(needle_read + rest_read, read, rtol=1e-5, atol=1e-6)
    assert needle_read.abs().max() > 0 and rest_read.abs().max() > 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(attention.num_heads))
    assert (p is None) == (memory_type != "hierarchical")


@pytest.mark.parametrize("memory_type,num_memories,rule", CASES)
def test_probe_memory_reports_every_probe_by_length(tokenizer, memory_type, num_memories, rule):
    model = tiny(tokenizer, memory_type, num_memories, rule)
    evaluation = EvalConfig(probe_lengths=(256, 1024), probe_docs=2, needle_gap=32).check()
    probes = probe_memory(model, tokenizer, evaluation, "cpu", None, seed=0)
    assert probes["family"] == "single" and probes["depth"] == 0 and probes["memory_rule"] == rule
    short, long = ({name: np.mean(v, axis=0) for name, v in probes["lengths"][n]["0"].items()}
                   for n in ("256", "1024"))
    assert all(len(v) == 2 for v in probes["lengths"]["256"]["0"].values())   # one value per document
    for length, values in ((256, short), (1024, long)):
        assert length - 3 * 16 < values["tokens_written"] < length and len(values["memory_norm"]) == num_memories
        assert 0 < values["needle_read_share"] < 1 and 0 < values["control_read_share"] < 1
        assert 0 < values["memory_gate"] < 1
        assert ("norm_norm" in values) == (rule != "delta_l2") == ("needle_norm_share" in values)
        assert ("selection_entropy" in values) == (num_memories > 1)
        if num_memories > 1:
            assert 0 <= values["selection_entropy"] <= values["entropy_uniform"] + 1e-6
            assert 0 < values["needle_weight"] <= 1 and values["needle_weight_uniform"] <= 1
        assert ("expansion_gate" in values) == (memory_type == "hierarchical")
    assert long["segment_share"] < short["segment_share"] and long["tokens_written"] > short["tokens_written"]


@pytest.mark.parametrize("rule,delta_rule", [("infini", True), ("infini", False), ("gated_norm", True),
                                             ("delta_l2", True)])
def test_a_trace_is_carried_as_the_writes_change_it(rule, delta_rule):
    """Writes are affine in M for fixed keys, values, strengths and z: carrying a span's trace X
    through later writes equals the difference of the real writes from M0 + X and from M0
    (without a delta rule the trace stays as written)."""
    g = torch.Generator().manual_seed(2)
    config = tiny_model("multi", 2, vocab=50, memory_rule=rule, use_delta_rule=delta_rule).config
    d, h = config.head_dim, config.num_attention_heads
    normaliser = rule != "delta_l2"
    start = MemoryState.empty(1, h, 2, d, normaliser=normaliser)
    for _ in range(3):   # some content in both memories
        keys = memory_feature(rule, torch.randn(1, h, 16, d, generator=g))
        start = write_memory(keys, torch.randn(1, h, 16, d, generator=g), start, delta_rule=delta_rule, rule=rule,
                             beta=torch.rand(1, h, 16, generator=g))
    trace = initial = torch.randn(1, h, 2, d, d, generator=g) * 0.1
    shifted = MemoryState(start.memory + trace, start.norm, start.writes)
    for _ in range(3):
        keys = memory_feature(rule, torch.randn(1, h, 16, d, generator=g))
        values, beta = torch.randn(1, h, 16, d, generator=g), torch.rand(1, h, 16, generator=g)
        trace = carry_trace(trace, keys, values, start, config, beta)
        start, shifted = (write_memory(keys, values, s, delta_rule=delta_rule, rule=rule, beta=beta)
                          for s in (start, MemoryState(shifted.memory, start.norm, start.writes)))
    torch.testing.assert_close(trace, shifted.memory - start.memory, rtol=1e-4, atol=1e-5)
    assert torch.equal(trace, initial) == (not delta_rule)


def test_needle_share_of_the_normaliser_fades_under_the_papers_rule(tokenizer):
    """sigma(k) > 0, so z only grows: the needle's part of sigma(q) . z falls with every token
    written after it (random weights: nothing is learned here)."""
    model = tiny(tokenizer, "single", 1, "infini")
    evaluation = EvalConfig(probe_lengths=(256, 1024, 4096), probe_docs=2, needle_gap=32).check()
    lengths = probe_memory(model, tokenizer, evaluation, "cpu", None, seed=0)["lengths"]
    shares = [np.mean(lengths[n]["0"]["needle_norm_share"]) for n in ("256", "1024", "4096")]
    assert 1 > shares[0] > shares[1] > shares[2] > 0


def test_probes_section_has_a_row_per_model_layer_and_length_and_a_plot_each(tokenizer, tmp_path):
    from infini_bench.leaderboard import probes_section

    evaluation = EvalConfig(probe_lengths=(256, 1024), probe_docs=2, needle_gap=32).check()
    results = [{"model": f"{kind} ({rule})", "slug": f"{kind}-{rule}", "seed": 0,
                "probes": probe_memory(tiny(tokenizer, kind, n, rule), tokenizer, evaluation, "cpu", None, seed=0)}
               for kind, n, rule in (("single", 1, "infini"), ("hierarchical", 3, "delta_l2"))]
    text = "\n".join(probes_section(results, tmp_path, "t"))
    assert text.startswith("## Memory probes") and "2 document(s) per length" in text
    rows = [line for line in text.splitlines() if line.startswith("| single") or line.startswith("| hierarchical")]
    assert len(rows) == 2 * 2
    assert rows[0].count("—") == 3   # single memory: no selection entropy, needle weight or p
    for r in results:
        png = tmp_path / f"t-probes-{r['slug']}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plots/{png.name}" in text


def test_probes_section_gives_no_interval_for_one_document(tokenizer, tmp_path):
    """One document a length has no t-interval: the cells are its values and the text says so."""
    from infini_bench.leaderboard import probes_section

    evaluation = EvalConfig(probe_lengths=(256,), probe_docs=1, needle_gap=32).check()
    results = [{"model": "single (infini)", "slug": "single-infini", "seed": 0,
                "probes": probe_memory(tiny(tokenizer, "single", 1, "infini"), tokenizer, evaluation, "cpu", None,
                                       seed=0)}]
    text = "\n".join(probes_section(results, tmp_path, "t"))
    assert "One document a length" in text and "t-interval" not in text
    row = next(line for line in text.splitlines() if line.startswith("| single"))
    assert "±" not in row
