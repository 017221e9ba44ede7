"""Evaluation metrics against plain computations, and the reversal metric on a trained toy model."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import tiny_model
from infini_bench import InfiniPythiaConfig, build_model
from infini_bench.data.reversal import reversal_facts
from infini_bench.data.tokenizer import train_bpe_tokenizer
from infini_bench.evaluation import (lm_metrics, loglikelihoods, reversal_metrics, sample_token_nll, score_tokens,
                                     warm_memory)

VOCAB = 101


def tiny(memory_type="single", scope="sequence", vocab=VOCAB, **overrides):
    return tiny_model(memory_type, vocab=vocab, memory_scope=scope, **overrides)


def test_lm_metrics_match_plain_computation():
    rng = np.random.default_rng(0)
    nll = rng.exponential(2.0, size=(5, 9))
    recall = rng.random((5, 10)) < 0.3
    m = lm_metrics(nll, recall, bins=(0, 2, 5), sample_len=10)
    assert m["ppl"] == pytest.approx(math.exp(sum(nll.flat) / nll.size))
    recall_losses = [nll[i, t] for i in range(5) for t in range(9) if recall[i, t + 1]]
    assert m["recall_ppl"] == pytest.approx(math.exp(sum(recall_losses) / len(recall_losses)))
    assert m["recall_tokens"] == len(recall_losses)
    assert list(m["position_ppl"]) == ["0-2", "2-5", "5-10"]
    assert m["position_ppl"]["2-5"] == pytest.approx(math.exp(nll[:, 2:5].mean()))
    assert m["position_ppl"]["5-10"] == pytest.approx(math.exp(nll[:, 5:].mean()))


def test_sample_nll_equals_model_loss_in_sequence_scope():
    model = tiny()
    x = torch.randint(0, VOCAB, (6, 24), generator=torch.Generator().manual_seed(1))
    nll = sample_token_nll(model, x.tolist(), batch_size=4, device=torch.device("cpu"))
    with torch.no_grad():
        loss = model(x, labels=x).loss.item()
    assert nll.shape == (6, 23)
    assert nll.mean() == pytest.approx(loss, rel=1e-5)


def test_sample_nll_carries_stream_memory_across_batches():
    model = tiny(scope="stream", segment_len=24)
    x = torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(2))
    nll = sample_token_nll(model, x.tolist(), batch_size=2, device=torch.device("cpu"))
    assert model._stream_state is None  # left reset
    with torch.no_grad():
        model(x[:2])
        second = torch.nn.functional.cross_entropy(model(x[2:]).logits[:, :-1].transpose(1, 2), x[2:, 1:],
                                                   reduction="none")
    assert np.allclose(nll[2:], second.double().numpy(), rtol=1e-5)


@pytest.fixture(scope="module")
def char_tokenizer():
    return train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog " * 5], vocab_size=VOCAB)


@pytest.mark.parametrize("memory_type,scope", [("single", "sequence"), ("multi", "stream"), ("none", "sequence")])
def test_loglikelihood_matches_unpadded_single_requests(char_tokenizer, memory_type, scope):
    model = tiny(memory_type, scope, vocab=len(char_tokenizer) + 11)
    requests = [("the quick brown", " fox"), ("over the lazy dog and the", " quick brown fox jumps"), ("a", " b"),
                ("jumps over", " the lazy dog the quick brown fox")]
    batched = loglikelihoods(model, char_tokenizer, requests, batch_size=3, device=torch.device("cpu"))
    for (context, continuation), (logprob, greedy) in zip(requests, batched):
        ids = char_tokenizer(context + continuation)["input_ids"]
        n_context = len(char_tokenizer(context)["input_ids"])
        if hasattr(model, "reset_memory"):
            model.reset_memory()
        with torch.no_grad():
            logits = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        expected = sum(logits[t - 1, ids[t]].item() for t in range(n_context, len(ids)))
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == all(logits[t - 1].argmax().item() == ids[t] for t in range(n_context, len(ids)))


def _fact_tokenizer(facts):
    return train_bpe_tokenizer([f.forward for f in facts["trained"]] * 3, vocab_size=300)


def test_reversal_metric_shows_the_reversal_curse():
    """A model that memorised the trained facts' forward sentences (each after EOS, as the suite
    trains them) answers them forward, and backward no better than the never-trained controls."""
    facts = reversal_facts(12, 1, seed=0)
    tokenizer = _fact_tokenizer(facts)
    torch.manual_seed(0)
    config = InfiniPythiaConfig.from_preset("pythia-14m", vocab_size=len(tokenizer), memory_type="none")
    model = build_model(config)
    rows = [[tokenizer.eos_token_id] + tokenizer(f.forward)["input_ids"] for f in facts["trained"]]
    width = max(map(len, rows))
    batch = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        model(batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    m = reversal_metrics(model, tokenizer, facts, num_distractors=10, batch_size=8, device="cpu", autocast_dtype=None,
                         seed=0)
    assert m["forward_acc"] >= 0.9 and m["forward_ppl"] < 2.0 < m["backward_ppl"]
    assert m["control_forward_acc"] <= 0.5 and m["backward_acc"] <= 0.5
    assert m["reversal_effect"] == m["backward_acc"] - m["control_backward_acc"]
    assert len(m["items"]["control_backward_correct"]) == m["control_facts"] == 12


@pytest.mark.parametrize("memory_type", ["none", "single"])
def test_a_random_model_ranks_at_chance(memory_type):
    """Answer and distractors are draws from one distribution: an untrained model's accuracy over
    176 facts per set and direction lies in the central 95% range of Binomial(176, 1/11)."""
    facts = reversal_facts(176, 8, seed=1)
    tokenizer = _fact_tokenizer(facts)
    model = tiny_model(memory_type, vocab=len(tokenizer), segment_len=64)
    m = reversal_metrics(model, tokenizer, facts, num_distractors=10, batch_size=64, device="cpu",
                         autocast_dtype=None, seed=1)
    low, high = (v / 176 for v in stats.binom.interval(0.95, 176, 1 / 11))
    for key in ("forward_acc", "backward_acc", "control_forward_acc", "control_backward_acc"):
        assert low <= m[key] <= high, (key, m[key], low, high)


def test_warm_memory_is_the_carried_stream_memory():
    """`warm_memory` equals the memory a stream-scope model carries after the same batches, and a
    question that reads a shared empty memory scores as with its own empty one."""
    model = tiny("multi", scope="stream", segment_len=16)
    x = torch.randint(0, VOCAB, (12, 16), generator=torch.Generator().manual_seed(2))
    state = warm_memory(model, x.tolist(), batch_size=4, device=torch.device("cpu"))
    model.reset_memory()
    with torch.no_grad():
        for start in range(0, 12, 4):
            model(x[start:start + 4])
    for warm, carried in zip(state, model._stream_state):
        assert warm.writes == carried.writes == 3
        torch.testing.assert_close(warm.memory, carried.memory)
        torch.testing.assert_close(warm.norm, carried.norm)
    rows = [(x[i, :8 + i].tolist(), 2) for i in range(4)]
    for (a, _), (b, _) in zip(score_tokens(model, rows, 4, torch.device("cpu")),
                              score_tokens(model, rows, 4, torch.device("cpu"), memory=model.empty_memory(1, True))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    warmed = score_tokens(model, rows, 4, torch.device("cpu"), memory=state)
    alone = score_tokens(model, rows[:1], 1, torch.device("cpu"), memory=state)
    np.testing.assert_allclose(warmed[0][0], alone[0][0], atol=1e-6)   # rows do not see each other
    assert not np.allclose(warmed[0][0], score_tokens(model, rows[:1], 1, torch.device("cpu"))[0][0])


@pytest.mark.parametrize("memory_type,first", [("multi", 700), ("hierarchical", 700), ("single", 2100)])
def test_streamed_scoring_equals_one_call(memory_type, first):
    """Rows of different lengths streamed together, right-padded: chunks before a row's first
    target only write the memory (update_memory); each row's scores are those of one call on
    that row alone."""
    from infini_bench.evaluation import chunk_tokens, stream_logprobs

    model = tiny(memory_type, segment_len=64)
    assert chunk_tokens(model) == 1024
    generator = torch.Generator().manual_seed(3)
    rows = [(torch.randint(0, VOCAB, (n,), generator=generator).tolist(), f)
            for n, f in ((2600, first), (2230, first + 33), (1100, 1050))]
    for (tokens, first_target), (lp, greedy) in zip(rows, stream_logprobs(model, rows, torch.device("cpu"))):
        with torch.no_grad():
            logits = torch.log_softmax(model(torch.tensor([tokens])).logits[0], -1)
        expected = logits[first_target - 1:-1].gather(-1, torch.tensor(tokens[first_target:])[:, None])[:, 0]
        assert lp.shape == (len(tokens) - first_target,)
        assert np.allclose(lp, expected.double().numpy(), atol=1e-4)
        assert (greedy == (logits[first_target - 1:-1].argmax(-1) == torch.tensor(tokens[first_target:])).numpy()).all()


def test_recall_ppl_through_the_memory_and_through_a_window():
    """Infini: each recall's loss from one whole-document pass. A model with a context limit: each
    recall predicted from the last `context_limit` tokens before it, as a plain forward pass
    over that window gives it."""
    from infini_bench.evaluation import recall_ppl

    tokens = torch.randint(0, VOCAB, (2500,), generator=torch.Generator().manual_seed(5)).tolist()
    spans = [(300, 303, 250), (1200, 1204, 1100), (2400, 2402, 2300)]
    for memory_type in ("single", "none"):
        model = tiny(memory_type, segment_len=64)
        if memory_type == "none":
            model.config.max_position_embeddings = 1000
        out = recall_ppl(model, tokens, spans, (0, 1000, 2000), 2, "cpu")
        for (start, end, _), recall in zip(spans, out["recalls"]):
            # The floor predicts the last recall token from the 1,000 tokens before it (lm-eval's window).
            window = tokens[:end] if memory_type == "single" else tokens[max(0, end - 1001):end]
            offset = end - len(window)
            with torch.no_grad():
                logits = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), -1)
            targets = torch.tensor(window[start - offset:end - offset])
            expected = -logits[start - offset - 1:end - offset - 1].gather(-1, targets[:, None]).sum()
            assert recall["nll"] == pytest.approx(float(expected), rel=1e-4) and recall["tokens"] == end - start
        assert list(out["recall_ppl"]) == ["0-1000", "1000-2000", "2000-2500"]
        assert out["recall_ppl"]["0-1000"] == pytest.approx(math.exp(out["recalls"][0]["nll"] / 3), rel=1e-9)


@pytest.mark.parametrize("memory_type", ["single", "none"])
def test_greedy_generate_matches_recomputation(memory_type):
    from infini_bench.evaluation import greedy_generate

    model = tiny(memory_type, segment_len=8)
    prompt = torch.randint(0, VOCAB, (21,), generator=torch.Generator().manual_seed(4)).tolist()
    new = greedy_generate(model, prompt, 12, lambda t: False, torch.device("cpu"))
    expected = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            expected.append(int(model(torch.tensor([expected])).logits[0, -1].argmax()))
    assert new == expected[21:]
    stop_at = greedy_generate(model, prompt, 12, lambda t: len(t) == 5, torch.device("cpu"))
    assert stop_at == expected[21:26]
