"""One path from a resolved suite to results: data, then for every model and seed build, train
(or resume), evaluate and write results.json, then the leaderboard.

`run_model` is the unit that suite runs (`python -m infini_bench.run`) and Ray Tune trials
(`infini_bench.sweep`) share; its run directory records the resolved config, package versions
and git commit, and a fingerprint of the config decides whether a finished run is reused, an
interrupted one resumed, or the model retrained.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, set_seed

from . import distributed
from .config import STAGE_DATA_KEYS, STAGE_OPTIONAL_KEYS, DataConfig
from .data import default_cache_dir, prepare_data, recall_document
from .data.needles import check_grid, validation_documents
from .device import autocast_dtype
from .evaluation import (context_limit, lm_metrics, per_sample_losses, recall_ppl, retrieval_cell, retrieval_grid,
                         reversal_metrics, sample_token_nll, warm_memory)
from .io import atomic_write_json
from .leaderboard import UNHASHED_RUN_FIELDS, RunsDisagree, write_leaderboard
from .models import build_model
from .paths import source_commit
from .probes import probe_memory
from .seeds import BOOTSTRAP, FIRST_STAGE_TRIAL, stream_rng, stream_seed
from .stats import Metric, block_length, bootstrap_interval
from .suites import ModelSpec
from .training import (NonFiniteLoss, check_checkpoint, eval_batch_size, latest_checkpoint, load_matching_weights,
                       per_process_batch, train, train_curriculum, windowed)

TRIAL_LENGTH, TRIAL_DOCUMENTS = 1024, 20  # a first-stage candidate's trial: single pass keys, needle at depth 0%
PACKAGES = ("torch", "transformers", "datasets", "accelerate", "tokenizers", "safetensors", "deepspeed", "lm_eval",
            "ray", "pandas", "numpy", "scipy", "infini-bench")


def environment() -> dict:
    """Package versions, git commit (with -dirty for uncommitted changes), hardware."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"packages": versions, "git_commit": source_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch_threads": torch.get_num_threads(), "data_parallel_processes": distributed.world_size()}


def model_vocab_size(tokenizer) -> int:
    """The tokenizer's size rounded up to a multiple of 128 (Pythia: 50,277 -> 50,304)."""
    return -(-len(tokenizer) // 128) * 128


def run_dir(config, spec, suite_seed: int | None = None) -> Path:
    """runs/<suite>/<model>, with `-seed<s>` for a seed other than the suite's own (`suite_seed`,
    by default the config's seed)."""
    seed = config.training.seed
    own = seed if suite_seed is None else suite_seed
    return config.runs_dir / (spec.slug if seed == own else f"{spec.slug}-seed{seed}")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_stage(curve: list[dict]) -> list[dict]:
    """The epochs of a curriculum's last stage (validation PPLs of other sample lengths are not
    comparable); all epochs without a curriculum."""
    return [c for c in curve if c.get("sample_len") == curve[-1].get("sample_len")]


def _epoch_record(line: str) -> dict:
    m = json.loads(line)
    record = {"epoch": m["epoch"], "train_ppl": m.get("train_ppl"), "val_ppl": m["eval_ppl"],
              "recall_ppl": m.get("eval_recall_ppl")}
    return {**record, "sample_len": m["sample_len"]} if "sample_len" in m else record


def stopping(curve: list[dict], max_epochs: int, min_delta: float) -> str:
    """How training of the last stage ended: "early stop" (patience ran out), "capped" (it hit
    max_epochs while its last epoch still improved by more than min_delta) or "max epochs"
    (it hit max_epochs, no longer improving); "one epoch" for a stage of one epoch."""
    val = [c["val_ppl"] for c in _last_stage(curve)]
    if len(val) < max_epochs:
        return "early stop"
    if len(val) == 1:
        return "one epoch"
    return "capped" if min(val[:-1]) - val[-1] > min_delta else "max epochs"


def config_fingerprint(resolved: dict, seed_aside: bool = False) -> str:
    """Hash of a resolved run config, without the output folder (a run directory moved or copied
    elsewhere is still the same run) and the suite's model list (the model's own resolved config
    is hashed; which other models were selected with --models does not change it); `seed_aside`:
    without the training seed (runs of one model are pooled across seeds only when these agree)."""
    resolved = json.loads(json.dumps(resolved, default=str))
    for key in UNHASHED_RUN_FIELDS:
        resolved["run"].pop(key, None)
    if seed_aside:
        resolved["run"]["training"].pop("seed")
    return _digest(resolved)


def _digest(resolved: dict) -> str:
    """A short hash of a JSON-able mapping (a run's or a shared stage's fingerprint)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def run_model(config, spec, data, device, env, suite_seed: int | None = None, stages=(), callbacks=()) -> dict:
    """Train and evaluate one model with `config.training.seed` in `run_dir(config, spec,
    suite_seed)`; `stages` are the curriculum's DataBundles, if the suite has one; `callbacks`
    extra Trainer callbacks. Returns the results (None on processes other than the main one)."""
    directory = run_dir(config, spec, suite_seed)
    directory.mkdir(parents=True, exist_ok=True)
    model_config = config.model_config(spec, vocab_size=model_vocab_size(data.tokenizer))
    run = {k: v for k, v in config.to_dict().items() if k != "num_seeds"}
    resolved = {"run": run, "model_name": spec.name, "model": model_config.to_dict(), "data": data.info,
                "stages": [stage.info for stage in stages]}
    if distributed.world_size() > 1:  # stream-scope memories are per process: results depend on it
        resolved["data_parallel_processes"] = distributed.world_size()
    shared = None
    if stages and config.shared_stage_model is not None:
        shared, shared_resolved = shared_first_stage(config, data, stages, suite_seed)
        resolved["shared_first_stage"] = shared_resolved["fingerprint_seed_aside"]
    fingerprint = config_fingerprint(resolved)
    finished = read_json(directory / "results.json")
    previous = read_json(directory / "run_config.json")
    distributed.barrier()  # every process has read these before the main one rewrites them
    if finished and finished.get("fingerprint") == fingerprint:
        print(f"{spec.name}: already finished with this config ({directory / 'results.json'}); not retrained",
              flush=True)
        return finished
    resume = bool(previous and previous.get("fingerprint") == fingerprint)
    if distributed.is_main():
        (directory / "results.json").unlink(missing_ok=True)
        atomic_write_json(directory / "run_config.json", {**resolved, "fingerprint": fingerprint})
        atomic_write_json(directory / "environment.json", env)
    if shared is not None:
        train_shared_first_stage(config, stages, device, env, shared, shared_resolved)
    set_seed(config.training.seed)
    model = build_model(model_config)
    parameters = sum(p.numel() for p in model.parameters())
    limit = context_limit(model)
    if limit is not None:  # a model with a context limit trains and validates on windows of it
        data, stages = windowed(data, limit), [windowed(stage, limit) for stage in stages]
    if stages:
        model, train_time = train_curriculum(model, stages, directory, config.training, config.evaluation, device,
                                             resume=resume, callbacks=callbacks, shared_first_stage=shared)
    else:
        model, train_time = train(model, data, directory, config.training, config.evaluation, device, resume=resume,
                                  callbacks=callbacks)

    precision = autocast_dtype(device)
    model.to(device)
    e = config.evaluation
    batch = eval_batch_size(model, config.training, e)
    validation, _ = heldout_metrics(model, data.validation, e, batch, device)
    test, test_items = heldout_metrics(model, data.test, e, batch, device)
    if not distributed.is_main():  # the other evaluations and the files are the main process's
        distributed.barrier()
        return None
    # Consecutive test samples share documents; in stream scope the memory also links the batches.
    align = batch if getattr(model.config, "memory_scope", None) == "stream" else 1
    block = block_length(len(test_items["nll"]), align)
    rng = np.random.default_rng(stream_seed(config.data.seed, BOOTSTRAP, "test-ppl", spec.slug))
    test["ppl_bootstrap_ci95"] = bootstrap_interval(Metric(np.array(test_items["nll"]), np.ones(len(test_items["nll"])),
                                                           True), block, align, rng)
    test["bootstrap_block"], test["bootstrap_align"] = block, align
    items = {"test": test_items}
    extra = {}
    if e.reversal:
        extra["reversal"] = reversal_metrics(model, data.tokenizer, data.facts, e.num_distractors, e.batch_size,
                                             device, precision, seed=config.data.seed)
        items["reversal"] = extra["reversal"].pop("items")
        if getattr(model.config, "memory_scope", None) == "stream":
            # Also with the memory training carries: the validation split read as training reads.
            warm = warm_memory(model, data.validation["input_ids"], batch, device, precision)
            extra["reversal_warm"] = reversal_metrics(model, data.tokenizer, data.facts, e.num_distractors,
                                                      e.batch_size, device, precision, seed=config.data.seed,
                                                      memory=warm)
            extra["reversal_warm"]["warmed_on"] = f"{len(data.validation)} validation samples"
            items["reversal_warm"] = extra["reversal_warm"].pop("items")
    if e.retrieval:
        start = time.perf_counter()
        # The documents of the infini_niah / infini_vt tasks (from the suite seed), the same for every model.
        extra["retrieval"] = retrieval_grid(
            model, data.tokenizer, e, device, precision, seed=config.data.seed,
            progress=lambda cell, s: print(f"{spec.name}: retrieval {'/'.join(map(str, cell))} in {s:.0f}s",
                                           flush=True))
        print(f"{spec.name}: retrieval grid in {time.perf_counter() - start:.0f}s", flush=True)
    if e.long_ppl_length:
        start = time.perf_counter()
        document, spans = recall_document(data.tokenizer, e.long_ppl_length, config.data.seed, e.long_ppl_bins)
        extra["long_ppl"] = recall_ppl(model, document, spans, e.long_ppl_bins, e.batch_size, device, precision)
        print(f"{spec.name}: long-document recall PPL in {time.perf_counter() - start:.0f}s", flush=True)
    if e.probe_lengths and context_limit(model) is None:
        start = time.perf_counter()
        extra["probes"] = probe_memory(model, data.tokenizer, e, device, precision, seed=config.data.seed)
        print(f"{spec.name}: memory probes in {time.perf_counter() - start:.0f}s", flush=True)
    curve = [_epoch_record(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    best = min(_last_stage(curve), key=lambda c: c["val_ppl"])
    t = config.training
    memory = model.memory_info() if hasattr(model, "memory_info") else None
    results = {
        "suite": config.suite, "model": spec.name, "slug": spec.slug, "order": spec.order,
        "memory_type": model_config.memory_type, "num_memories": model_config.num_memories,
        "memory_rule": model_config.memory_rule, "memory_scope": model_config.memory_scope, "segment_len": model_config.segment_len,
        "preset": config.preset, "device": str(device), "seed": config.training.seed,
        "parameters": parameters, "memory_bytes": memory["total_bytes"] if memory else 0,
        "best_epoch": best["epoch"], "epochs_trained": len(curve), "best_val_ppl": validation["ppl"],
        "stop": stopping(curve, t.curriculum[-1]["max_epochs"] if t.curriculum else t.max_epochs, t.min_delta),
        "eval_batch_size": batch, "validation": validation, "test": test, **extra, "curve": curve,
        "train_time_s": train_time, "data": data.info, "git_commit": env["git_commit"], "fingerprint": fingerprint,
        **({"shared_first_stage": read_json(shared / "stage.json")} if shared is not None else {}),
        "config_fingerprint": config_fingerprint(resolved, seed_aside=True),
    }
    atomic_write_json(directory / "per_item.json", items)  # before results.json: a finished run has both
    atomic_write_json(directory / "results.json", results)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    distributed.barrier()
    return results


def shared_first_stage(config, data, stages, suite_seed: int | None = None) -> tuple[Path, dict]:
    """Where the suite's shared first stage is trained (runs/<suite>/shared-first-stage, per seed
    as a model's folder) and what it is: the model that trains it, the training and data
    sections with the first stage only, that stage's data, and their fingerprint."""
    spec = config.shared_stage_model
    model_config = config.model_config(spec, vocab_size=model_vocab_size(data.tokenizer))
    resolved = {"model_name": spec.name, "model": model_config.to_dict(),
                "training": dataclasses.asdict(config.training.for_stage(config.training.curriculum[0])),
                "data": dataclasses.asdict(config.data), "stage": stages[0].info}
    t = config.training
    if t.first_stage_candidates > 1:
        resolved["selection"] = {"candidates": t.first_stage_candidates, "trial_steps": t.first_stage_trial_steps,
                                 "trial_length": TRIAL_LENGTH,
                                 "trial_documents": TRIAL_DOCUMENTS, "trial_samples": "random draw",
                                 "second_stage": t.curriculum[1]}
    if distributed.world_size() > 1:
        resolved["data_parallel_processes"] = distributed.world_size()
    resolved = json.loads(json.dumps(resolved, default=str))
    resolved["fingerprint"] = _digest(resolved)
    # What a model records: the same without the seed, which its own fingerprint holds (seeds of a
    # model are pooled when their configs agree but for the seed).
    seedless = {**resolved, "training": {k: v for k, v in resolved["training"].items() if k != "seed"}}
    seedless.pop("fingerprint")
    resolved["fingerprint_seed_aside"] = _digest(seedless)
    return run_dir(config, ModelSpec("shared first stage", {}), suite_seed), resolved


def train_shared_first_stage(config, stages, device, env, directory: Path, resolved: dict):
    """Train the curriculum's first stage once for the suite (`shared_first_stage`'s folder and
    description), unless stage.json there has the same fingerprint; stage.json gets the training
    time and, with first_stage_candidates > 1, every candidate's trial and which one was kept."""
    finished = read_json(directory / "stage.json")
    if finished and finished.get("fingerprint") == resolved["fingerprint"]:
        return
    previous = read_json(directory / "run_config.json")
    distributed.barrier()
    if distributed.is_main():
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "stage.json").unlink(missing_ok=True)
        atomic_write_json(directory / "run_config.json", resolved)
        atomic_write_json(directory / "environment.json", env)
    t = config.training
    resume = bool(previous and previous.get("fingerprint") == resolved["fingerprint"])
    print(f"shared first stage: {resolved['model_name']} trains it once for every model", flush=True)
    if t.first_stage_candidates == 1:
        elapsed, selection = _train_first_stage(config, stages, device, directory, t.seed, resume), {}
    else:
        start = time.perf_counter()
        candidates = _first_stage_candidates(config, stages, device, directory / "candidates", resume)
        for c in candidates:
            print(f"shared first stage: candidate seed {c['seed']}: {c['correct']}/{c['documents']} at {c['length']} "
                  f"tokens, depth 0%, after {c['trial_steps']} steps of the second stage (mean answer log-prob "
                  f"{c['answer_logprob']:.2f})", flush=True)
        kept = max(candidates, key=lambda c: (c["correct"], c["answer_logprob"]))
        elapsed = kept["train_time_s"]
        if distributed.is_main():
            for name in ("model.safetensors", "config.json", "metrics.jsonl"):
                shutil.copyfile(directory / "candidates" / f"seed-{kept['seed']}" / name, directory / name)
        selection = {"kept_seed": kept["seed"], "candidates": candidates,
                     "selection_wall_s": time.perf_counter() - start}
    if distributed.is_main():
        atomic_write_json(directory / "stage.json", {"model_name": resolved["model_name"], "train_time_s": elapsed,
                                                     **t.curriculum[0], **selection,
                                                     "fingerprint": resolved["fingerprint"]})
    distributed.barrier()


def _first_stage_candidates(config, stages, device, folder: Path, resume: bool) -> list[dict]:
    """Train and try every candidate first stage (seeds training.seed, + 1, ...) in folder/seed-<seed>
    (with `resume`, a finished candidate is kept); on CPU in one process, the candidates train side
    by side, one process a core (small first-stage models run about as fast on one core as on two)."""
    t = config.training
    seeds = list(range(t.seed, t.seed + t.first_stage_candidates))
    todo = [seed for seed in seeds if not (resume and read_json(folder / f"seed-{seed}" / "candidate.json"))]
    cores = torch.get_num_threads()
    workers = min(len(todo), cores) if device.type == "cpu" and distributed.world_size() == 1 else 1
    if workers > 1:
        jobs = [(config, stages, str(device), folder / f"seed-{seed}", seed, max(1, cores // workers)) for seed in todo]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_first_stage_candidate, *zip(*jobs)))
    else:
        for seed in todo:
            _first_stage_candidate(config, stages, str(device), folder / f"seed-{seed}", seed)
    return [read_json(folder / f"seed-{seed}" / "candidate.json") for seed in seeds]


def _first_stage_candidate(config, stages, device: str, folder: Path, seed: int, threads: int | None = None):
    """One candidate: its first stage, then its trial; folder/candidate.json gets both."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    elapsed = _train_first_stage(config, stages, device, folder, seed, resume=False)
    trial = first_stage_trial(config, stages, device, folder, seed)
    if distributed.is_main():
        atomic_write_json(folder / "candidate.json", {"seed": seed, "train_time_s": elapsed, **trial})
    distributed.barrier()


def _shared_stage_model(config, stages):
    """A fresh model of the suite's shared first stage (training.shared_first_stage)."""
    return build_model(config.model_config(config.shared_stage_model, vocab_size=model_vocab_size(stages[0].tokenizer)))


def _train_first_stage(config, stages, device, folder: Path, seed: int, resume: bool) -> float:
    """The shared stage model's first stage with `seed` in `folder`; returns its training time."""
    set_seed(seed)
    model = _shared_stage_model(config, stages)
    limit = context_limit(model)
    stage = stages[0] if limit is None else windowed(stages[0], limit)
    training = dataclasses.replace(config.training.for_stage(config.training.curriculum[0]), seed=seed)
    _, elapsed = train(model, stage, folder, training, config.evaluation, device, resume=resume)
    return elapsed


def first_stage_trial(config, stages, device, folder: Path, seed: int) -> dict:
    """Whether a candidate first stage (saved in `folder`) leads to reading: the shared stage model
    from it trains first_stage_trial_steps steps of the second stage (in folder/trial), then answers
    single pass keys at TRIAL_LENGTH tokens, needle at depth 0% (carried by the memory), on
    TRIAL_DOCUMENTS validation documents."""
    start = time.perf_counter()
    t = config.training
    model = _shared_stage_model(config, stages)
    load_matching_weights(model, folder)
    second = stages[1]
    # A random draw of the stage's samples (they are stored corpus first, retrieval documents after).
    count = min(len(second.train), t.first_stage_trial_steps * t.batch_size)
    picked = sorted(stream_rng(config.data.seed, FIRST_STAGE_TRIAL, "train").sample(range(len(second.train)), count))
    trial_data = dataclasses.replace(second, train=second.train.select(picked))
    set_seed(seed)
    model, _ = train(model, trial_data, folder / "trial", dataclasses.replace(
        t.for_stage({**t.curriculum[1], "max_epochs": 1}), seed=seed), config.evaluation, device)
    documents = validation_documents(second.tokenizer, "single", TRIAL_LENGTH, TRIAL_DOCUMENTS, config.data.seed,
                                     config.evaluation.needle_gap)
    cell = retrieval_cell(model.to(device), second.tokenizer, documents, config.evaluation.batch_size, device,
                          autocast_dtype(device))
    return {"trial_steps": -(-count // t.batch_size), "length": TRIAL_LENGTH, "documents": len(documents),
            "correct": sum(cell["correct"]), "answer_logprob": float(np.mean(cell["answer_logprob"])),
            "trial_time_s": time.perf_counter() - start}


def heldout_metrics(model, samples, evaluation, batch: int, device) -> tuple[dict, dict]:
    """PPL (overall, recall tokens, by position) of validation or test samples, read in order in
    batches of `batch`, and its per-sample parts; shared by the processes under data parallelism."""
    nll = sample_token_nll(model, samples["input_ids"], batch, device, autocast_dtype(device))
    sample_len = len(samples[0]["input_ids"])
    return (lm_metrics(nll, samples["recall"], evaluation.position_bins, sample_len),
            per_sample_losses(nll, samples["recall"], evaluation.position_bins, sample_len))


def reevaluate(config, data, device) -> int:
    """Reload each model's saved weights (safetensors) and recompute its validation and test metrics;
    0 if every one equals its results.json, 1 otherwise (the same number of processes as the
    run is needed in stream scope, where each process streams its share through its memory)."""
    mismatches = 0
    for spec in config.models:
        directory = run_dir(config, spec)
        recorded = read_json(directory / "results.json")
        model = AutoModelForCausalLM.from_pretrained(directory).to(device)
        batch = eval_batch_size(model, config.training, config.evaluation)
        pairs = []
        for split in ("validation", "test"):
            again, _ = heldout_metrics(model, getattr(data, split), config.evaluation, batch, device)
            pairs += [(again["ppl"], recorded[split]["ppl"]), (again["recall_ppl"], recorded[split]["recall_ppl"]),
                      *zip(again["position_ppl"].values(), recorded[split]["position_ppl"].values())]
        match = all(x is y or math.isclose(x, y, rel_tol=1e-6) for x, y in pairs)
        mismatches += not match
        if distributed.is_main():
            print(f"{spec.name}: test PPL {again['ppl']:.6f} (results.json: {recorded['test']['ppl']:.6f}); "
                  f"validation and test, overall, recall-token and position PPLs: {'match' if match else 'MISMATCH'}",
                  flush=True)
    return 1 if mismatches else 0


def stage_data(data: DataConfig, stage: dict) -> DataConfig:
    """The data section as one curriculum stage sees it: its sample length and count, and its own
    retrieval share and families where it sets them."""
    return dataclasses.replace(data, sample_len=stage["sample_len"], num_samples=stage["num_samples"],
                               **{key: stage[key] for key in STAGE_DATA_KEYS if key in stage})


def prepare_suite_data(config):
    """The suite's data, and a DataBundle per curriculum stage (with the same tokenizer); the
    retrieval grid is checked against the tokenizer before anything trains."""
    data = prepare_data(config.data, default_cache_dir())
    stages = [prepare_data(stage_data(config.data, stage), default_cache_dir(), tokenizer=data.tokenizer)
              for stage in config.training.curriculum]
    e = config.evaluation
    check_grid(data.tokenizer, e.retrieval_cells() + e.probe_cells(), e.needle_gap, config.data.seed)
    return data, stages


def seeds_of(config) -> list[int]:
    return [config.training.seed + i for i in range(config.num_seeds)]


def run_suite(config, device, data, stages=()) -> Path | None:
    """Every model with every seed, the leaderboard rebuilt after each; returns its path."""
    env = environment()
    print(f"data: {data.info['train_samples']} train ({data.info['reversal_samples']} of them reversal facts) / "
          f"{data.info['validation_samples']} validation / {data.info['test_samples']} test samples, "
          f"tokenizer {data.info['tokenizer']} "
          f"({data.info['vocab_size']} tokens)", flush=True)
    leaderboard = None
    for seed in seeds_of(config):
        # Each seed is one run per model; the data (and so the validation set) stays the same.
        seeded = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
        for spec in config.models:
            start = time.perf_counter()
            print(f"== {spec.name}, seed {seed} ==", flush=True)
            results = run_model(seeded, spec, data, device, env, suite_seed=config.training.seed, stages=stages)
            if not distributed.is_main():  # it only trains and shares the validation evaluation
                continue
            print(f"{spec.name}: best val PPL {results['best_val_ppl']:.3f} at epoch {results['best_epoch']} "
                  f"({results['stop']}), test PPL {results['test']['ppl']:.3f}, test recall PPL "
                  f"{results['test'].get('recall_ppl') or float('nan'):.2f}, "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            leaderboard = write_leaderboard(config.runs_dir, config.leaderboard_dir, config.suite,
                                            config.description, seeds=seeds_of(config),
                                            models=config.suite_models or None)
    return leaderboard


def preflight(config, reevaluate: bool = False):
    """What must hold before anything is written (ValueError naming the field otherwise): the
    batch divides among the processes, --reevaluate has finished runs, resume points are readable."""
    per_process_batch(config.training.batch_size)
    for spec in config.models if reevaluate else ():
        if not (run_dir(config, spec) / "results.json").is_file():
            raise ValueError(f"reevaluate: model {spec.slug!r} has no finished run in {config.runs_dir}; "
                             f"accepted: models with a results.json")
    for spec in config.models:
        checkpoint = latest_checkpoint(run_dir(config, spec) / "trainer")
        if checkpoint is not None:
            check_checkpoint(checkpoint)


def describe(config, device) -> list[str]:
    """The choices of a run, as printed at its start."""
    t = config.training
    epochs = (" -> ".join(f"{s['num_samples']} x {s['sample_len']} ({s['max_epochs']} epoch(s)"
                          + "".join(f", {k} {s[k]}" for k in STAGE_OPTIONAL_KEYS if k in s) + ")"
                          for s in t.curriculum) if t.curriculum else f"up to {t.max_epochs} epochs")
    lines = [f"suite {config.suite} ({config.suite_file}) on {device}: preset {config.preset}, "
             f"data {config.data.source} ({config.data.num_samples} x {config.data.sample_len}, tokenizer "
             f"{config.data.tokenizer}), lr {t.lr}, batch {t.batch_size}, {epochs} (patience {t.patience}, "
             f"min_delta {t.min_delta}), seed {t.seed}, {distributed.world_size()} process(es)"
             f"{', DeepSpeed ' + t.deepspeed if t.deepspeed else ''}, output {Path(config.output_dir).resolve()}"]
    return lines + [f"  model {spec.name}: {spec.overrides}" for spec in config.models]


def run_job(config, device, reevaluate_only: bool = False) -> int:
    """The whole job after the config is known to be good: exit status 0, 1 (a non-finite loss
    or a reevaluation mismatch) or 2 (data that cannot be prepared)."""
    distributed.init(device)
    if not distributed.is_main():  # one report on the console: the main process's (errors still show)
        sys.stdout = open(os.devnull, "w")
    print("\n".join(describe(config, device)), flush=True)
    start = time.perf_counter()
    try:
        with distributed.main_first():  # the main process builds the data cache, the others read it
            data, stages = prepare_suite_data(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if reevaluate_only:
        return reevaluate(config, data, device)
    try:
        leaderboard = run_suite(config, device, data, stages)
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RunsDisagree as error:  # runs the leaderboard refuses to pool or compare
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"leaderboard: {leaderboard} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0
