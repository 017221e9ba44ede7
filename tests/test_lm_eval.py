"""lm-eval integration: the stock `lm_eval` command with `infini_pythia` and the infini_bench tasks."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest

from helpers import run_cli

STOCK_TASKS = Path(lm_eval.__file__).parent / "tasks"


def lm_eval_cli(*args, cache):
    return run_cli(*args, cache=cache, module="lm_eval")


def results_json(output_path: Path) -> dict:
    (path,) = output_path.rglob("results_*.json")
    return json.loads(path.read_text())["results"]


@pytest.fixture(scope="module")
def infini_bench_group(smoke, tmp_path_factory):
    out, _ = smoke
    output = tmp_path_factory.mktemp("lm_eval_out")
    run_dir = out / "runs" / "smoke" / "single-memory"
    result = lm_eval_cli("--model", "infini_pythia", "--model_args", f"pretrained={run_dir}", "--tasks",
                         "infini_bench", "--include_path", "tasks", "--batch_size", "16", "--output_path",
                         str(output), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout, results_json(output)


@pytest.mark.slow
def test_lm_eval_command_runs_the_infini_bench_group_and_prints_every_metric(infini_bench_group):
    _, stdout, results = infini_bench_group
    for task in ("infini_niah_single_1k", "infini_niah_single_4k", "infini_niah_multikey_1k",
                 "infini_niah_multikey_4k", "infini_vt_1k"):
        assert task in stdout
        for metric in ["acc", "acc_local", "acc_depth_0", "acc_depth_50"]:   # the smoke suite's depths
            value = results[task][f"{metric},none"]
            assert 0.0 <= value <= 1.0
        assert math.isnan(results[task]["acc_depth_25,none"]) and results[task]["answer_logprob,none"] < 0
    for task, metric in [("infini_reversal_forward", "acc"), ("infini_reversal_backward", "acc"),
                         ("infini_reversal_forward_control", "acc"), ("infini_reversal_backward_control", "acc"),
                         ("infini_reversal_forward_ppl", "ppl"), ("infini_reversal_backward_ppl", "ppl")]:
        assert task in stdout and math.isfinite(results[task][f"{metric},none"])
    for start in (0, 16, 32):  # the smoke samples have 64 tokens: bins from 64 and 96 are empty
        assert math.isfinite(results["infini_positional_ppl"][f"ppl_pos_{start},none"])
    assert re.search(r"ppl_pos_96\s*\|", stdout)


@pytest.mark.slow
def test_leaderboard_and_lm_eval_agree_on_reversal(infini_bench_group):
    run_dir, _, results = infini_bench_group
    reversal = json.loads((run_dir / "results.json").read_text())["reversal"]
    assert results["infini_reversal_forward"]["acc,none"] == pytest.approx(reversal["forward_acc"], abs=1e-9)
    assert results["infini_reversal_backward"]["acc,none"] == pytest.approx(reversal["backward_acc"], abs=1e-9)
    for direction in ("forward", "backward"):
        assert results[f"infini_reversal_{direction}_control"]["acc,none"] == pytest.approx(
            reversal[f"control_{direction}_acc"], abs=1e-9)
    assert results["infini_reversal_forward_ppl"]["ppl,none"] == pytest.approx(reversal["forward_ppl"], rel=1e-5)
    assert results["infini_reversal_backward_ppl"]["ppl,none"] == pytest.approx(reversal["backward_ppl"], rel=1e-5)


@pytest.mark.slow
def test_leaderboard_and_lm_eval_agree_on_positional_ppl(smoke, tmp_path):
    """For a model without a carried memory both score each test sample on its own."""
    out, _ = smoke
    run_dir = out / "runs" / "smoke" / "pythia-baseline"
    result = lm_eval_cli("--model", "infini_pythia", "--model_args", f"pretrained={run_dir}", "--tasks",
                         "infini_positional_ppl", "--include_path", "tasks", "--batch_size", "16",
                         "--output_path", str(tmp_path), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = results_json(tmp_path)["infini_positional_ppl"]
    leaderboard = (out / "leaderboard" / "smoke.md").read_text()
    position_ppl = json.loads((run_dir / "results.json").read_text())["test"]["position_ppl"]
    for label, value in position_ppl.items():
        start = label.split("-")[0]
        assert printed[f"ppl_pos_{start},none"] == pytest.approx(value, rel=1e-5)
        assert f"| {label}" in leaderboard


@pytest.mark.slow
def test_startup_hook_is_cheap_and_other_models_still_resolve():
    timing = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    (line,) = [x for x in timing.stderr.splitlines() if x.rstrip().endswith("_infini_bench_lm_eval")]
    cumulative_us = int(line.split("|")[1])
    assert cumulative_us < 5000
    probe = ("from lm_eval.api.registry import get_model; import sys; "
             "print(get_model('infini_pythia').__name__, get_model('hf').__name__, get_model('dummy').__name__,"
             " 'torch' in sys.modules)")
    resolved = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert resolved.stdout.split() == ["InfiniPythiaLM", "HFLM", "DummyLM", "True"]
    untouched = subprocess.run([sys.executable, "-c", "import sys, json; print('infini_bench' in sys.modules)"],
                               capture_output=True, text=True, check=True)
    assert untouched.stdout.strip() == "False"


def test_entry_point_declared():
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="lm_eval.models", name="infini_pythia")
    assert entry.value == "infini_bench.lm_eval_model:InfiniPythiaLM"


def write_stock_task_copies(folder: Path):
    """Stock wikitext (rolling PPL) and arc_easy (multiple choice) pointed at local files."""
    from infini_bench.data.embedded import embedded_documents

    docs = [d["text"] for d in embedded_documents(3, seed=9, min_words=120)]
    (folder / "pages.jsonl").write_text("".join(json.dumps({"page": d}) + "\n" for d in docs))
    questions = [{"id": str(i), "question": q, "answerKey": "A",
                  "choices": {"text": [a, b, "the wind"], "label": ["A", "B", "C"]}}
                 for i, (q, a, b) in enumerate([("What was green by the street?", "the field", "a lantern"),
                                                ("Who went back to the town?", "the courier", "the river")])]
    (folder / "arc.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    for name, stock, data in [("local_wikitext", STOCK_TASKS / "wikitext" / "wikitext.yaml", "pages.jsonl"),
                              ("local_arc_easy", STOCK_TASKS / "arc" / "arc_easy.yaml", "arc.jsonl")]:
        files = {split: str(folder / data) for split in ("train", "validation", "test")}
        (folder / f"{name}.yaml").write_text(
            f"include: {stock}\ntask: {name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files: {json.dumps(files)}\n")
    return docs


@pytest.mark.slow
def test_stock_rolling_and_multiple_choice_tasks(smoke, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import infini_bench.models  # noqa: F401
    from infini_bench.evaluation import stream_logprobs

    out, _ = smoke
    run_dir = out / "runs" / "smoke" / "multi-memory-4"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = write_stock_task_copies(tasks)
    result = lm_eval_cli("--model", "infini_pythia", "--model_args", f"pretrained={run_dir}", "--tasks",
                         "local_wikitext,local_arc_easy", "--include_path", str(tasks), "--output_path",
                         str(tmp_path / "out"), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    results = results_json(tmp_path / "out")
    assert 0 <= results["local_arc_easy"]["acc,none"] <= 1 and "acc_norm,none" in results["local_arc_easy"]
    # Rolling PPL: each page read whole through the memory, as stream_logprobs does.
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    total, words = 0.0, 0
    for page in docs:  # wikitext's detokenizer leaves these pages unchanged
        ids = [tokenizer.eos_token_id] + tokenizer(page)["input_ids"]
        total += stream_logprobs(model, [(ids, 1)], "cpu")[0][0].sum()
        words += len(re.split(r"\s+", page))
    assert results["local_wikitext"]["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert len(tokenizer(docs[0])["input_ids"]) > model.config.segment_len  # more than one segment


@pytest.mark.slow
def test_model_args_override_segment_len_and_reject_bad_values(smoke):
    from infini_bench.lm_eval_model import InfiniPythiaLM

    out, _ = smoke
    lm = InfiniPythiaLM(pretrained=str(out / "runs" / "smoke" / "single-memory"), segment_len=16,
                        memory_scope="sequence", device="cpu")
    assert lm.model.config.segment_len == 16 and lm.model.config.memory_scope == "sequence"
    with pytest.raises(ValueError, match="^segment_len"):
        InfiniPythiaLM(pretrained=str(out / "runs" / "smoke" / "single-memory"), segment_len=0)
    with pytest.raises(ValueError, match="^segment_len: only for Infini models"):
        InfiniPythiaLM(pretrained=str(out / "runs" / "smoke" / "pythia-baseline"), segment_len=16)


@pytest.mark.slow
def test_generate_until_stops_at_the_stop_sequence(smoke):
    from lm_eval.api.instance import Instance

    from infini_bench.evaluation import greedy_generate
    from infini_bench.lm_eval_model import InfiniPythiaLM

    out, _ = smoke
    lm = InfiniPythiaLM(pretrained=str(out / "runs" / "smoke" / "multi-memory-4"), device="cpu")
    context = "Nobody watched the wind, so the field stayed green by the street. The quiet"
    request = Instance(request_type="generate_until", doc={}, idx=0,
                       arguments=(context, {"until": ["."], "max_gen_toks": 20}))
    (text,) = lm.generate_until([request], disable_tqdm=True)
    full = lm.tok_decode(greedy_generate(lm.model, lm.tok_encode(context), 20, lambda t: False, lm.device))
    assert "." not in text and full.startswith(text)
    if "." in full:
        assert text == full.split(".")[0]


@pytest.mark.slow
def test_bad_checkpoints_give_one_line_errors(smoke, tmp_path):
    import shutil

    from infini_bench.data.tokenizer import train_bpe_tokenizer
    from infini_bench.lm_eval_model import InfiniPythiaLM

    out, _ = smoke
    source = out / "runs" / "smoke" / "single-memory"
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 3])
    with pytest.raises(ValueError, match=r"^pretrained: .* cannot be loaded, truncated or corrupted\?") as error:
        InfiniPythiaLM(pretrained=str(truncated), device="cpu")
    assert "\n" not in str(error.value)

    mismatched = tmp_path / "mismatched"
    shutil.copytree(source, mismatched)
    from infini_bench.data.embedded import embedded_documents

    texts = [d["text"] for d in embedded_documents(100, seed=3)]
    train_bpe_tokenizer(texts, vocab_size=2000).save_pretrained(mismatched)
    with pytest.raises(ValueError, match=r"^tokenizer: \d+ tokens do not fit the checkpoint's vocab_size 512"):
        InfiniPythiaLM(pretrained=str(mismatched), device="cpu")


@pytest.mark.slow
def test_hf_model_runs_a_retrieval_task_with_the_documented_defaults(tmp_path):
    """Any local transformers causal LM, with its own tokenizer and no run_config.json, runs
    infini_niah_multikey_1k under `--model hf`: the documents come from the defaults (seed 42,
    depths 0/25/50/75 and the local control, here 2 documents a depth)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from infini_bench.data.embedded import embedded_documents
    from infini_bench.data.tokenizer import train_bpe_tokenizer

    folder = tmp_path / "model"
    tokenizer = train_bpe_tokenizer([d["text"] for d in embedded_documents(100, seed=0)], vocab_size=512)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=2048)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert not (folder / "run_config.json").exists()
    output = tmp_path / "out"
    result = lm_eval_cli("--model", "hf", "--model_args", f"pretrained={folder}", "--tasks", "infini_niah_multikey_1k",
                         "--include_path", "tasks", "--metadata", '{"docs_per_depth": 2}', "--output_path",
                         str(output), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = output.rglob("results_*.json")
    written = json.loads(path.read_text())
    task = written["results"]["infini_niah_multikey_1k"]
    assert written["n-samples"]["infini_niah_multikey_1k"]["effective"] == 10
    assert 0 <= task["acc,none"] <= 1 and 0 <= task["acc_local,none"] <= 1 and task["answer_logprob,none"] < 0
