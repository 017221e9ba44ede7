"""`python -m infini_bench.run --suite core`: train and evaluate a suite's models, write the leaderboard."""

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "tokenizers", "safetensors", "deepspeed", "lm_eval",
            "ray", "pandas", "numpy", "infini-bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    parser = _Parser(prog="python -m infini_bench.run", description=__doc__)
    parser.add_argument("--suite", required=True, help="suite name (configs/suites/<name>.yaml) or a YAML path; "
                                                       "'sweep' runs the Ray Tune sweep configs/sweeps/default.yaml")
    parser.add_argument("--preset", help="model dims: pythia-14m, pythia-70m, pythia-160m, pythia-410m")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data", help="embedded, pile, pg19, pile:<local mirror>, or a local file/folder")
    parser.add_argument("--output-dir", default=".", help="runs/ and leaderboard/ are written here")
    parser.add_argument("--seed", type=int, help="data and training seed (default: the suite's)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train and evaluate every model with this many seeds (seed, seed + 1, ...)")
    parser.add_argument("--max-epochs", type=int, help="override the suite's training.max_epochs")
    parser.add_argument("--deepspeed", help="DeepSpeed config passed to the Trainer: zero1, zero2, zero3, "
                                            "zero3_offload (configs/deepspeed/) or a .json path")
    parser.add_argument("--models", help="only these models, by run-directory name (comma-separated)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="no training: reload each finished model's saved weights, recompute its validation "
                             "metrics and compare them with its results.json (exit 1 on a difference)")
    # Set by the `deepspeed` launcher; the rank is read from LOCAL_RANK / RANK as under torchrun.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    repo = Path(__file__).resolve().parents[1]
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        pass
    import torch

    from . import distributed

    return {"packages": versions, "git_commit": commit, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch_threads": torch.get_num_threads(), "data_parallel_processes": distributed.world_size()}


def model_vocab_size(tokenizer) -> int:
    """The tokenizer's size rounded up to a multiple of 128 (Pythia: 50,277 -> 50,304)."""
    return -(-len(tokenizer) // 128) * 128


def run_model(config, spec, data, device, env, base_seed: int | None = None, stages=(), callbacks=()) -> dict:
    """Train and evaluate one model with `config.training.seed`; its run directory is named
    after the model, with `-seed<s>` added for seeds other than the suite's own. `stages` are
    the curriculum's DataBundles, if the suite has one; `callbacks` extra Trainer callbacks."""
    import torch
    from transformers import set_seed

    from . import distributed
    from .data import long_document
    from .evaluation import context_limit, long_document_ppl, passkey_grid, reversal_metrics
    from .io import atomic_write_json
    from .models import build_model
    from .training import autocast_dtype, train, train_curriculum, windowed

    seed = config.training.seed
    run_dir = config.runs_dir / (spec.slug if seed == (base_seed or seed) else f"{spec.slug}-seed{seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    model_config = config.model_config(spec, vocab_size=model_vocab_size(data.tokenizer))
    run = {k: v for k, v in config.to_dict().items() if k != "num_seeds"}
    resolved = {"run": run, "model_name": spec.name, "model": model_config.to_dict(), "data": data.info,
                "stages": [stage.info for stage in stages]}
    if distributed.world_size() > 1:  # stream-scope memories are per process: results depend on it
        resolved["data_parallel_processes"] = distributed.world_size()
    fingerprint = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]
    finished = _read_json(run_dir / "results.json")
    previous = _read_json(run_dir / "run_config.json")
    distributed.barrier()  # every process has read these before the main one rewrites them
    if finished and finished.get("fingerprint") == fingerprint:
        print(f"{spec.name}: already finished with this config ({run_dir / 'results.json'}); not retrained",
              flush=True)
        return finished
    resume = bool(previous and previous.get("fingerprint") == fingerprint)
    if distributed.is_main():
        (run_dir / "results.json").unlink(missing_ok=True)
        atomic_write_json(run_dir / "run_config.json", {**resolved, "fingerprint": fingerprint})
        atomic_write_json(run_dir / "environment.json", env)
    set_seed(config.training.seed)
    model = build_model(model_config)
    parameters = sum(p.numel() for p in model.parameters())
    limit = context_limit(model)
    if limit is not None:  # a model with a context limit trains and validates on windows of it
        data, stages = windowed(data, limit), [windowed(stage, limit) for stage in stages]
    if stages:
        model, train_time = train_curriculum(model, stages, run_dir, config.training, config.evaluation, device,
                                             resume=resume, callbacks=callbacks)
    else:
        model, train_time = train(model, data, run_dir, config.training, config.evaluation, device, resume=resume,
                                  callbacks=callbacks)

    precision = autocast_dtype(device)
    model.to(device)
    e = config.evaluation
    validation = validation_metrics(model, data, e, device)
    if not distributed.is_main():  # the other evaluations and the files are the main process's
        distributed.barrier()
        return None
    extra = {}
    if e.reversal:
        extra["reversal"] = reversal_metrics(model, data.tokenizer, data.facts, e.num_distractors, e.batch_size,
                                             device, precision, seed=config.data.seed)
    if e.passkey_lengths:
        start = time.perf_counter()
        # The documents of the infini_passkey tasks (their seed, 0), the same for every run.
        extra["passkey"] = passkey_grid(model, data.tokenizer, e.passkey_lengths, e.passkey_depths, e.passkey_docs,
                                        device, precision)
        print(f"{spec.name}: pass-key grid in {time.perf_counter() - start:.0f}s", flush=True)
    if e.long_ppl_length:
        start = time.perf_counter()
        document = long_document(data.tokenizer, e.long_ppl_length, config.data.seed)
        extra["long_ppl"] = long_document_ppl(model, document, e.long_ppl_bins, device, precision)
        print(f"{spec.name}: long-document PPL in {time.perf_counter() - start:.0f}s", flush=True)
    curve = [_epoch_record(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = min(last_stage(curve), key=lambda c: c["val_ppl"])
    memory = model.memory_info() if hasattr(model, "memory_info") else None
    results = {
        "suite": config.suite, "model": spec.name, "slug": spec.slug, "order": spec.order,
        "memory_type": model_config.memory_type, "num_memories": model_config.num_memories,
        "memory_scope": model_config.memory_scope, "segment_len": model_config.segment_len,
        "preset": config.preset, "device": str(device), "seed": config.training.seed,
        "parameters": parameters, "memory_bytes": memory["total_bytes"] if memory else 0,
        "best_epoch": best["epoch"], "epochs_trained": len(curve), "best_val_ppl": validation["ppl"],
        "validation": validation, **extra, "curve": curve, "train_time_s": train_time,
        "data": data.info, "git_commit": env["git_commit"], "fingerprint": fingerprint,
    }
    atomic_write_json(run_dir / "results.json", results)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    distributed.barrier()
    return results


def validation_metrics(model, data, evaluation, device) -> dict:
    """Validation PPL (overall, recall tokens, by position) with its bootstrap interval; shared
    by the processes under data parallelism."""
    from .evaluation import lm_metrics, sample_token_nll
    from .training import autocast_dtype

    nll = sample_token_nll(model, data.validation["input_ids"], evaluation.batch_size, device, autocast_dtype(device))
    metrics = lm_metrics(nll, data.validation["recall"], evaluation.position_bins, len(data.validation[0]["input_ids"]))
    return {**metrics, "ppl_bootstrap_ci95": bootstrap_ppl_ci(nll)}


def reevaluate(config, data, device) -> int:
    """Reload each model's saved weights (safetensors) and recompute its validation metrics;
    0 if every one equals its results.json, 1 otherwise (the same number of processes as the
    run is needed in stream scope, where each process streams its share through its memory)."""
    from transformers import AutoModelForCausalLM

    from . import distributed, models  # noqa: F401 - importing models registers infini_pythia with Auto

    mismatches = 0
    for spec in config.models:
        run_dir = config.runs_dir / spec.slug
        recorded = _read_json(run_dir / "results.json")
        model = AutoModelForCausalLM.from_pretrained(run_dir).to(device)
        again = validation_metrics(model, data, config.evaluation, device)
        pairs = [(again["ppl"], recorded["validation"]["ppl"]), (again["recall_ppl"], recorded["validation"]["recall_ppl"]),
                 *zip(again["position_ppl"].values(), recorded["validation"]["position_ppl"].values())]
        match = all(x is y or math.isclose(x, y, rel_tol=1e-6) for x, y in pairs)
        mismatches += not match
        if distributed.is_main():
            print(f"{spec.name}: val PPL {again['ppl']:.6f} (results.json: {recorded['validation']['ppl']:.6f}); "
                  f"overall, recall-token and position PPLs: {'match' if match else 'MISMATCH'}", flush=True)
    return 1 if mismatches else 0


def bootstrap_ppl_ci(nll, resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the validation PPL, resampling validation samples."""
    import numpy as np

    per_sample = nll.mean(1)
    rng = np.random.default_rng(seed)
    means = per_sample[rng.integers(0, len(per_sample), (resamples, len(per_sample)))].mean(1)
    return [float(np.exp(np.percentile(means, 2.5))), float(np.exp(np.percentile(means, 97.5)))]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_stage(curve: list[dict]) -> list[dict]:
    """The epochs of a curriculum's last stage (validation PPLs of other sample lengths are not
    comparable); all epochs without a curriculum."""
    return [c for c in curve if c.get("sample_len") == curve[-1].get("sample_len")]


def _epoch_record(line: str) -> dict:
    m = json.loads(line)
    record = {"epoch": m["epoch"], "train_ppl": m.get("train_ppl"), "val_ppl": m["eval_ppl"],
              "recall_ppl": m.get("eval_recall_ppl")}
    return {**record, "sample_len": m["sample_len"]} if "sample_len" in m else record


def run_suite(config, device, data, stages=()) -> Path | None:
    from . import distributed
    from .leaderboard import write_leaderboard

    env = environment()
    print(f"data: {data.info['train_samples']} train ({data.info['reversal_samples']} of them reversal facts) / "
          f"{data.info['validation_samples']} validation samples, tokenizer {data.info['tokenizer']} "
          f"({data.info['vocab_size']} tokens)", flush=True)
    leaderboard = None
    for seed in seeds_of(config):
        # Each seed is one run per model; the data (and so the validation set) stays the same.
        seeded = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
        for spec in config.models:
            start = time.perf_counter()
            print(f"== {spec.name}, seed {seed} ==", flush=True)
            results = run_model(seeded, spec, data, device, env, base_seed=config.training.seed, stages=stages)
            if not distributed.is_main():  # it only trains and shares the validation evaluation
                continue
            print(f"{spec.name}: best val PPL {results['best_val_ppl']:.2f} at epoch {results['best_epoch']}, "
                  f"recall PPL {results['validation'].get('recall_ppl') or float('nan'):.2f}, "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            leaderboard = write_leaderboard(config.runs_dir, config.leaderboard_dir, config.suite,
                                            config.description)
    return leaderboard


def prepare_suite_data(config):
    """The suite's data, and a DataBundle per curriculum stage (with the same tokenizer)."""
    from .data import default_cache_dir, prepare_data

    data = prepare_data(config.data, default_cache_dir())
    stages = [prepare_data(dataclasses.replace(config.data, sample_len=stage["sample_len"],
                                               num_samples=stage["num_samples"]),
                           default_cache_dir(), tokenizer=data.tokenizer)
              for stage in config.training.curriculum]
    return data, stages


def seeds_of(config) -> list[int]:
    return [config.training.seed + i for i in range(config.num_seeds)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.suite == "sweep":  # the Ray Tune sweep over memory count x learning rate
        from .sweep import main as sweep_main

        return sweep_main(["--config", "default", "--output-dir", args.output_dir])
    from . import distributed
    from .suites import load_run_config
    from .training import check_checkpoint, latest_checkpoint, per_process_batch, pick_device

    try:
        device = pick_device(args.device)
        config = load_run_config(args.suite, device.type, preset=args.preset, data=args.data,
                                 output_dir=args.output_dir, seed=args.seed, deepspeed=args.deepspeed,
                                 max_epochs=args.max_epochs,
                                 only_models=args.models.split(",") if args.models else None,
                                 num_seeds=args.seeds)
        per_process_batch(config.training.batch_size)
        for spec in config.models if args.reevaluate else ():
            if not (config.runs_dir / spec.slug / "results.json").is_file():
                raise ValueError(f"reevaluate: model {spec.slug!r} has no finished run in {config.runs_dir}; "
                                 f"accepted: models with a results.json")
        for spec in config.models:  # before anything is written: can every resume point be read?
            checkpoint = latest_checkpoint(config.runs_dir / spec.slug / "trainer")
            if checkpoint is not None:
                check_checkpoint(checkpoint)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    distributed.init(device)
    if not distributed.is_main():  # one report on the console: the main process's (errors still show)
        sys.stdout = open(os.devnull, "w")
    epochs = (" -> ".join(f"{s['num_samples']} x {s['sample_len']} ({s['max_epochs']} epoch(s))"
                          for s in config.training.curriculum) if config.training.curriculum
              else f"up to {config.training.max_epochs} epochs")
    print(f"suite {config.suite} ({config.suite_file}) on {device}: preset {config.preset}, "
          f"data {config.data.source} ({config.data.num_samples} x {config.data.sample_len}, tokenizer "
          f"{config.data.tokenizer}), lr {config.training.lr}, batch {config.training.batch_size}, "
          f"{epochs} (patience {config.training.patience}), seed {config.training.seed}, "
          f"{distributed.world_size()} process(es){', DeepSpeed ' + config.training.deepspeed if config.training.deepspeed else ''}, "
          f"output {Path(config.output_dir).resolve()}", flush=True)
    for spec in config.models:
        print(f"  model {spec.name}: {spec.overrides}", flush=True)
    start = time.perf_counter()
    try:
        with distributed.main_first():  # the main process builds the data cache, the others read it
            data, stages = prepare_suite_data(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.reevaluate:
        return reevaluate(config, data, device)
    from .training import NonFiniteLoss

    try:
        leaderboard = run_suite(config, device, data, stages)
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"leaderboard: {leaderboard} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
