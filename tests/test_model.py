"""Infini-Pythia as a transformers model: scopes, variants, sizes, save/load, generation."""

import functools
import os
import pickle
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoXForCausalLM

from helpers import tiny_model
from infini_bench import InfiniPythiaConfig, InfiniPythiaForCausalLM, build_model

VOCAB = 97
tiny = functools.partial(tiny_model, vocab=VOCAB)


def tokens(batch=2, length=32, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("memory_type,num_memories", [("single", 1), ("multi", 4), ("hierarchical", 4)])
@pytest.mark.parametrize("delta_rule,rule", [(True, "infini"), (False, "infini"), (True, "gated_norm"),
                                             (True, "delta_l2")])
def test_one_call_equals_segment_by_segment_calls(memory_type, num_memories, delta_rule, rule):
    model = tiny(memory_type, num_memories, use_delta_rule=delta_rule, memory_rule=rule)
    x = tokens(length=4 * 8)
    with torch.no_grad():
        whole = model(x).logits
        state, pieces = None, []
        for s in range(0, 32, 8):
            out = model(x[:, s:s + 8], memory_state=state)
            state = out.memory_state
            pieces.append(out.logits)
    assert torch.allclose(whole, torch.cat(pieces, 1), atol=1e-5, rtol=1e-5)
    # The memory matters: the last segment alone, without the past, predicts differently.
    with torch.no_grad():
        alone = model(x[:, 24:]).logits
    assert (alone - whole[:, 24:]).abs().max() > 1e-4


def test_uneven_pieces_match_one_call():
    model = tiny("multi", 2)
    x = tokens(length=29)
    with torch.no_grad():
        whole = model(x).logits
        first = model(x[:, :16])
        second = model(x[:, 16:], memory_state=first.memory_state)
    assert torch.allclose(whole, torch.cat([first.logits, second.logits], 1), atol=1e-5, rtol=1e-5)


def key_weight_rows(model):
    """Rows of the fused QKV weight of the Infini layer that project keys."""
    attn = model.gpt_neox.layers[0].attention
    h, d = attn.num_heads, attn.head_dim
    return torch.cat([torch.arange(i * 3 * d + d, i * 3 * d + 2 * d) for i in range(h)])


def test_gradient_reaches_key_projection_through_memory():
    model = tiny("single").train()
    model.config.hidden_dropout = 0.0
    x = tokens(length=32)
    weight = model.gpt_neox.layers[0].attention.query_key_value.weight
    rows = key_weight_rows(model)

    def last_segment_loss(logits):
        return torch.nn.functional.cross_entropy(logits[:, -8:-1].reshape(-1, VOCAB), x[:, -7:].reshape(-1))

    embeds = model.gpt_neox.embed_in(x).detach().requires_grad_(True)
    last_segment_loss(model(inputs_embeds=embeds).logits).backward()
    with_memory = weight.grad[rows].clone()
    assert embeds.grad[:, :24].abs().max() > 0  # earlier segments reach the last one only through memory

    model.zero_grad()
    with torch.no_grad():
        state = model(x[:, :24]).memory_state
    state = tuple(s.detach() for s in state)
    last_segment_loss(model(x[:, 24:], memory_state=state).logits).backward()
    local_only = weight.grad[rows]
    memory_path = (with_memory - local_only).norm() / with_memory.norm()
    assert memory_path > 1e-3


def test_bptt_segments_truncates_gradient_through_memory_only():
    """With bptt_segments=k, the loss of the last segment reaches inputs of the k segments
    before it through the memory, and nothing earlier; the forward pass is unchanged."""
    x = tokens(length=32)
    grads, logits = {}, {}
    for k in (0, 2):
        model = tiny("single", bptt_segments=k, infini_layers=[0]).train()
        model.config.hidden_dropout = 0.0
        embeds = model.gpt_neox.embed_in(x).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds)
        out.logits[:, -8:].sum().backward()
        grads[k], logits[k] = embeds.grad.abs().amax((0, 2)), out.logits.detach()
    assert torch.equal(logits[0], logits[2])
    assert (grads[0][:16] > 0).all() and (grads[0][16:] > 0).all()
    assert (grads[2][:16] == 0).all() and (grads[2][16:] > 0).all()


@pytest.mark.parametrize("rule", ["infini", "gated_norm", "delta_l2"])
@pytest.mark.parametrize("memory_type,num_memories,layers", [
    ("single", 1, [0]), ("multi", 4, [1]), ("hierarchical", 4, [0, 3])])
def test_update_memory_equals_the_full_forward_memory(memory_type, num_memories, layers, rule):
    """update_memory runs only up to the last Infini layer, which only writes: the memory it
    leaves is the one the full forward pass leaves, from an empty or a carried memory, with or
    without padding, under every memory rule."""
    model = tiny(memory_type, num_memories, infini_layers=layers, memory_rule=rule)
    x, mask = tokens(length=27), torch.ones(2, 27, dtype=torch.long)
    mask[1, 20:] = 0
    with torch.no_grad():
        carried = model(tokens(length=16, seed=5)).memory_state
        for state in (model.empty_memory(2), carried):
            for attention_mask in (None, mask):
                full = model(x, attention_mask=attention_mask, memory_state=state).memory_state
                fast = model.update_memory(x, state, attention_mask=attention_mask)
                assert len(fast) == len(layers)
                for a, b in zip(full, fast):
                    assert a.writes == b.writes
                    torch.testing.assert_close(a.memory, b.memory, rtol=1e-5, atol=1e-6)
                    torch.testing.assert_close(a.norm, b.norm, rtol=1e-5, atol=1e-6)


def test_stream_scope_carries_detached_memory_between_calls():
    model = tiny("multi", 2, memory_scope="stream", segment_len=16)
    x, y = tokens(length=16, seed=1), tokens(length=16, seed=2)
    with torch.no_grad():
        first = model(x).logits
        after_x = model(y).logits
        model.reset_memory()
        fresh = model(y).logits
    assert model._stream_state[0].memory.shape[0] == 1  # one memory shared by the batch
    assert not model._stream_state[0].memory.requires_grad
    assert (after_x - fresh).abs().max() > 1e-4
    model.reset_memory()
    with torch.no_grad():
        assert torch.equal(model(x).logits, first)


def test_stream_batch_rows_share_memory():
    """In stream scope a row's prediction depends on what the other rows wrote before."""
    model = tiny("single", memory_scope="stream", segment_len=16)
    a, b = tokens(2, 16, seed=3), tokens(2, 16, seed=4)
    with torch.no_grad():
        model(a)
        with_a = model(b).logits
        model.reset_memory()
        model(torch.stack([a[0], b[1]]))
        with_other = model(b).logits
    assert (with_a[0] - with_other[0]).abs().max() > 1e-5


def test_multi_with_one_memory_equals_single_exactly():
    single, multi = tiny("single", seed=5), tiny("multi", 1, seed=5)
    x = tokens(length=40)
    with torch.no_grad():
        assert torch.equal(single(x).logits, multi(x).logits)


def test_none_is_gpt_neox():
    model = tiny("none")
    assert type(model) is GPTNeoXForCausalLM
    with pytest.raises(ValueError, match="memory_type"):
        InfiniPythiaForCausalLM(InfiniPythiaConfig.from_preset("pythia-14m", memory_type="none"))


def test_pythia_70m_sizes():
    def count(memory_type, n=1):
        config = InfiniPythiaConfig.from_preset("pythia-70m", memory_type=memory_type, num_memories=n)
        with torch.device("meta"):
            model = build_model(config)
        return model, sum(p.numel() for p in model.parameters())

    _, baseline = count("none")
    single_model, single = count("single")
    multi_model, multi = count("multi", 4)
    _, hierarchical = count("hierarchical", 4)
    assert baseline == 70_426_624  # EleutherAI/pythia-70m
    assert single == multi
    assert abs(single - 70.4e6) / 70.4e6 < 1e-3
    assert hierarchical - multi == 65_793
    assert single_model.memory_info()["bytes_per_memory"] == 133_120
    assert multi_model.memory_info()["total_bytes"] == 532_480
    # memory_info agrees with the tensors the model actually carries.
    state = multi_model.gpt_neox.empty_memory(1, device="cpu")[0]
    assert state.memory.nbytes + state.norm.nbytes == 532_480


def test_memory_rule_sizes():
    """gated_norm adds no parameter and no state; delta_l2 adds its write-strength projection
    (hidden x heads, no bias) and stores no normaliser; memory_info matches the tensors carried."""
    def build(rule, memory_type="multi", n=4):
        config = InfiniPythiaConfig.from_preset("pythia-70m", memory_type=memory_type, num_memories=n,
                                                memory_rule=rule)
        with torch.device("meta"):
            model = build_model(config)
        return model, sum(p.numel() for p in model.parameters())

    (infini, infini_params), (gated, gated_params), (delta, delta_params) = (
        build(rule) for rule in ("infini", "gated_norm", "delta_l2"))
    assert gated_params == infini_params and delta_params - infini_params == 512 * 8
    assert gated.memory_info() == infini.memory_info()
    assert delta.memory_info()["bytes_per_memory"] == 8 * 64 * 64 * 4
    for model in (infini, delta):
        state = model.gpt_neox.empty_memory(1, device="cpu")[0]
        assert state.memory.nbytes + state.norm.nbytes == model.memory_info()["total_bytes"]


@pytest.mark.parametrize("memory_type,num_memories,scope", [
    ("single", 1, "sequence"), ("multi", 4, "stream"), ("hierarchical", 4, "sequence"), ("none", 1, "sequence")])
def test_save_and_auto_load_give_identical_logits(tmp_path, monkeypatch, memory_type, num_memories, scope):
    model = tiny(memory_type, num_memories, memory_scope=scope)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))

    def refuse(*args, **kwargs):
        raise AssertionError("a loading path unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ in ("InfiniPythiaConfig", "GPTNeoXConfig")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    x = tokens(length=24)
    with torch.no_grad():
        if hasattr(model, "reset_memory"):
            model.reset_memory()
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_generate_matches_greedy_recomputation():
    model = tiny("multi", 2)
    prompt = tokens(1, 13)
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(6):
            next_token = model(expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, next_token], 1)
    assert torch.equal(generated, expected)


def test_right_padding_does_not_change_real_tokens():
    model = tiny("multi", 2)
    x = tokens(2, 20)
    mask = torch.ones_like(x)
    mask[1, 13:] = 0
    with torch.no_grad():
        padded = model(x, attention_mask=mask).logits
        short = model(x[1:, :13]).logits
    assert torch.allclose(padded[1, :13], short[0], atol=1e-5)
    assert torch.isfinite(padded).all()


def test_infini_layers_all():
    model = tiny("single", infini_layers="all")
    assert model.memory_info()["num_infini_layers"] == 6
    with torch.no_grad():
        out = model(tokens(length=20))
    assert len(out.memory_state) == 6 and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("overrides,field", [
    (dict(memory_type="dual"), "memory_type"),
    (dict(memory_scope="global"), "memory_scope"),
    (dict(num_memories=0), "num_memories"),
    (dict(memory_type="single", num_memories=4), "num_memories"),
    (dict(num_memories=2.5, memory_type="multi"), "num_memories"),
    (dict(segment_len=0), "segment_len"),
    (dict(segment_len="256"), "segment_len"),
    (dict(infini_layers=[6]), "infini_layers"),
    (dict(infini_layers=[]), "infini_layers"),
    (dict(infini_layers="some"), "infini_layers"),
    (dict(infini_layers=[0, 0]), "infini_layers"),
    (dict(use_delta_rule="yes"), "use_delta_rule"),
    (dict(stream_update="reference"), "stream_update"),
    (dict(hidden_size=130), "hidden_size"),
    (dict(bptt_segments=-1), "bptt_segments"),
    (dict(bptt_segments=1.5), "bptt_segments"),
    (dict(memory_rule="armt"), "memory_rule"),
    (dict(memory_rule="delta_l2", use_delta_rule=False), "use_delta_rule"),
    (dict(memory_rule="delta_l2", memory_scope="stream"), "memory_rule"),
    (dict(memory_rule="gated_norm", memory_scope="stream", stream_update="reference"), "stream_update"),
])
def test_config_rejects_bad_values(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        InfiniPythiaConfig.from_preset("pythia-14m", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="^preset: unknown 'pythia-1b'; accepted: pythia-14m, pythia-70m"):
        InfiniPythiaConfig.from_preset("pythia-1b")


def test_explicit_per_row_memory_in_stream_scope_matches_sequence_scope():
    stream = tiny("multi", 2, memory_scope="stream", seed=7)
    sequence = tiny("multi", 2, memory_scope="sequence", seed=7)
    x = tokens(3, 30)
    with torch.no_grad():
        stream(x)  # give the carried stream memory some content
        carried = stream._stream_state
        out = stream(x, memory_state=stream.empty_memory(3))
        assert stream._stream_state is carried  # an explicit memory leaves the carried one alone
        assert torch.allclose(out.logits, sequence(x).logits, atol=1e-6)
        assert out.memory_state[0].memory.shape[0] == 3


@pytest.mark.parametrize("memory_type,num_memories,layers", [("multi", 2, [0]), ("hierarchical", 2, [1])])
def test_checkpoint_loads_with_its_own_code_where_infini_bench_is_absent(tmp_path, memory_type, num_memories,
                                                                          layers):
    """save_pretrained copies the model code (auto_map in config.json); a fresh interpreter in
    which `import infini_bench` fails loads it with trust_remote_code=True to the same logits."""
    from safetensors.torch import load_file, save_file

    model = tiny(memory_type, num_memories, infini_layers=layers)
    model.save_pretrained(tmp_path / "ckpt")
    assert {"modeling_infini_pythia.py", "configuration_infini_pythia.py", "memory.py"} <= {
        p.name for p in (tmp_path / "ckpt").iterdir()}
    x = tokens(length=27)
    save_file({"x": x}, tmp_path / "x.safetensors")
    code = f"""
import os, sys
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "infini_bench"))]
sys.modules["infini_bench"] = None  # and any import of infini_bench fails
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
assert not type(model).__module__.startswith("infini_bench"), type(model).__module__
try:
    import infini_bench
    raise SystemExit("infini_bench importable")
except ImportError:
    pass
with torch.no_grad():
    logits = model(load_file({str(tmp_path / "x.safetensors")!r})["x"]).logits
save_file({{"logits": logits, "module": torch.tensor(list(type(model).__module__.encode()))}},
          {str(tmp_path / "out.safetensors")!r})
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = load_file(tmp_path / "out.safetensors")
    assert bytes(out["module"].tolist()).decode().startswith("transformers_modules.")
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-5)


def test_matching_weights_load_across_memory_types_and_rules(tmp_path):
    """A shared first stage's weights go into a model of another memory type or rule wherever the
    name and shape match; the parameters the saved model lacks keep their own initialisation."""
    from infini_bench.training import load_matching_weights

    source = tiny("single", seed=1)
    source.save_pretrained(tmp_path)
    saved = source.state_dict()
    for target in (tiny("multi", 4, memory_rule="delta_l2", seed=2), tiny("none", seed=2)):
        fresh = {k: v.clone() for k, v in target.state_dict().items()}
        kept = load_matching_weights(target, tmp_path)
        for name, value in target.state_dict().items():
            if name in kept:
                torch.testing.assert_close(value, fresh[name], rtol=0, atol=0)
            else:
                torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
        assert len(kept) < len(fresh) // 2 and all(name in saved or name in kept for name in fresh)
    assert load_matching_weights(tiny("single", seed=3), tmp_path) == []
