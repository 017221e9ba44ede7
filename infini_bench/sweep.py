"""Ray Tune sweeps: a grid over memory count x learning rate (x memory type).

    python -m infini_bench.sweep --config configs/sweeps/smoke.yaml [--resume] [--output-dir .]
    python -m infini_bench.run --suite sweep          # configs/sweeps/default.yaml

Each trial is the suite's own training and evaluation (`pipeline.run_model`, the same run directory
and results.json as a suite run), reporting validation metrics to Tune at every epoch; ASHA can
stop weak trials early. Trials run in a local Ray instance, or on a cluster when RAY_ADDRESS is
set. A failed trial is reported with its error and the others finish (exit status 1: partial
failure); `--resume` continues an interrupted sweep (Tuner.restore) without rerunning finished
trials. All trials end up in leaderboard/sweeps/<name>.md with heatmaps over the grid.

Sweep file (configs/sweeps/<name>.yaml):
  name, description
  suite:      the suite whose data, training and evaluation (device profile included) trials use
  model:      the swept model: the suite's model_defaults plus these fields
  grid:       num_memories: [...], lr: [...], optional memory_type: [...]
  scheduler:  optional {type: asha, grace_period, reduction_factor}
  resources:  per trial {cpu, gpu}
  max_epochs: optional override of the suite's training.max_epochs
"""

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

from .cli import ArgumentParser
from .device import pick_device
from .io import atomic_write_json
from .leaderboard import write_sweep_leaderboard
from .paths import find_config
from .pipeline import environment, prepare_suite_data, run_model, shared_first_stage, train_shared_first_stage
from .suites import ModelSpec, load_run_config

# Ray itself is imported inside the functions that use it: importing it takes seconds, and a
# bad sweep file is reported before it is needed.

GRID_KEYS = ("memory_type", "num_memories", "lr")
SWEEP_KEYS = {"name", "description", "suite", "model", "grid", "scheduler", "resources", "max_epochs"}


@dataclass
class SweepConfig:
    name: str
    path: str
    suite: str
    description: str = ""
    model: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    scheduler: dict | None = None
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_epochs: int | None = None

    def trials(self) -> list[dict]:
        """Every point of the grid, in order."""
        points = [{}]
        for key in GRID_KEYS:
            if key in self.grid:
                points = [{**p, key: v} for p in points for v in self.grid[key]]
        return points


def load_sweep(name: str, output_dir: str = ".") -> SweepConfig:
    """Read and validate a sweep file (its trials as they would run into `output_dir`); raises
    ValueError naming the bad field."""
    path = find_config("sweeps", name, "config", "sweep ")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"config: {path} must be a mapping with keys {', '.join(sorted(SWEEP_KEYS))}")
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"sweep.{sorted(unknown)[0]}: unknown key; accepted: {', '.join(sorted(SWEEP_KEYS))}")
    if not isinstance(raw.get("suite"), str):
        raise ValueError("sweep.suite: expected the name of a suite (configs/suites/<name>.yaml)")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not grid or set(grid) - set(GRID_KEYS):
        raise ValueError(f"sweep.grid: expected a mapping of lists with keys among {', '.join(GRID_KEYS)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep.grid.{key}: expected a non-empty list")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in grid.get("lr", [])):
        raise ValueError(f"sweep.grid.lr: expected positive numbers, got {grid['lr']}")
    scheduler = raw.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, dict) or scheduler.get("type") != "asha"
                                  or set(scheduler) - {"type", "grace_period", "reduction_factor"}):
        raise ValueError("sweep.scheduler: expected {type: asha, grace_period: <int>, reduction_factor: <int>}")
    resources = {"cpu": 1, "gpu": 0, **(raw.get("resources") or {})}
    if set(resources) - {"cpu", "gpu"} or any(not isinstance(v, (int, float)) or v < 0 for v in resources.values()):
        raise ValueError(f"sweep.resources: expected {{cpu: <number>, gpu: <number>}}, got {raw.get('resources')}")
    max_epochs = raw.get("max_epochs")
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1):
        raise ValueError(f"sweep.max_epochs: expected a positive integer, got {max_epochs!r}")
    config = SweepConfig(name=raw.get("name", path.stem), path=str(path.resolve()), suite=raw["suite"],
                         description=raw.get("description", ""), model=raw.get("model") or {}, grid=grid,
                         scheduler=scheduler, resources=resources, max_epochs=max_epochs)
    first_stages, device = set(), "cuda" if resources["gpu"] else "cpu"
    for params in config.trials():  # every trial's config must resolve before anything runs
        trial = trial_run_config(config, params, device, output_dir)
        if trial.shared_stage_model is not None:
            first_stages.add(json.dumps(dataclasses.asdict(trial.training.for_stage(trial.training.curriculum[0])),
                                        sort_keys=True))
    if len(first_stages) > 1:
        raise ValueError("sweep.grid: the suite's shared first stage would differ between trials (the swept lr "
                         "reaches it); give its first curriculum stage its own lr")
    return config


def trial_name(params: dict) -> str:
    """The trial's name and run-directory name, e.g. multi-m4-lr0p0003 or m1-lr1e09."""
    lr = f"lr{params['lr']:g}".replace("+", "").replace(".", "p") if "lr" in params else ""
    parts = [params.get("memory_type", ""), f"m{params['num_memories']}" if "num_memories" in params else "", lr]
    return "-".join(p for p in parts if p)


def trial_run_config(sweep: SweepConfig, params: dict, device: str, output_dir: str):
    """The suite's RunConfig for one trial: one model, the trial's lr, runs under runs/sweeps/<name>."""
    config = load_run_config(sweep.suite, device, output_dir=output_dir, max_epochs=sweep.max_epochs)
    overrides = {**config.model_defaults, **sweep.model, **{k: v for k, v in params.items() if k != "lr"}}
    spec = ModelSpec(trial_name(params), overrides)
    assert spec.slug == spec.name  # the run directory is named after the trial
    config = dataclasses.replace(config, suite=f"sweeps/{sweep.name}", models=[spec])
    if "lr" in params:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, lr=float(params["lr"])))
    config.model_config(spec)  # validates the model fields
    return config


def _report(metrics: dict):
    from ray import tune

    tune.report({k: v for k, v in metrics.items() if v is not None})


class ReportToTune(TrainerCallback):
    """Reports each epoch's validation metrics to Tune (ASHA decides on them)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        _report({"epoch": round(state.epoch or 0), "val_ppl": metrics["eval_ppl"],
                 "recall_ppl": metrics.get("eval_recall_ppl")})


def run_trial(params: dict, sweep: SweepConfig, output_dir: str, device: str):
    """One trial in a Ray worker: the suite's training and evaluation of one model; its last
    report names the Ray node it ran on."""
    import ray

    torch.set_num_threads(max(1, int(sweep.resources["cpu"])))
    config = trial_run_config(sweep, params, device, output_dir)
    data, stages = prepare_suite_data(config)
    results = run_model(config, config.models[0], data, pick_device(device), environment(), stages=stages,
                        callbacks=[ReportToTune()])
    _report({"epoch": results["epochs_trained"], "val_ppl": results["best_val_ppl"],
             "recall_ppl": results["validation"].get("recall_ppl"), "final": True,
             "node": ray.get_runtime_context().get_node_id()})


def _scheduler(sweep: SweepConfig):
    if not sweep.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=10_000,
                         grace_period=sweep.scheduler.get("grace_period", 1),
                         reduction_factor=sweep.scheduler.get("reduction_factor", 2))


def _error_line(error) -> str:
    """The last line of a trial's error, which names the exception."""
    lines = [x for x in str(error).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def run_sweep(sweep: SweepConfig, output_dir: Path, resume: bool = False) -> tuple[Path, int]:
    """Run (or resume) the sweep; returns the leaderboard path and the number of failed trials."""
    import ray
    from ray import tune

    device = "cuda" if sweep.resources["gpu"] else "cpu"
    root = output_dir / "runs" / "sweeps" / sweep.name
    experiment = root / "tune"
    # The data once, before trials start: local trials then read it from the cache. The suite's
    # shared first stage too (the same for every trial, checked by load_sweep): trials that run
    # side by side then find it finished.
    config = trial_run_config(sweep, sweep.trials()[0], device, str(output_dir))
    data, stages = prepare_suite_data(config)
    if config.shared_stage_model is not None:
        directory, resolved = shared_first_stage(config, data, stages)
        train_shared_first_stage(config, stages, pick_device(device), environment(), directory, resolved)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, output_dir=str(output_dir), device=device),
        {"cpu": sweep.resources["cpu"], "gpu": sweep.resources["gpu"]})
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        if resume:
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
        else:
            # A fresh sweep; finished trials are still not retrained: their run directories
            # hold results.json for the same config, which run_model reuses.
            shutil.rmtree(experiment, ignore_errors=True)
            tuner = tune.Tuner(
                trainable, param_space={k: tune.grid_search(v) for k, v in sweep.grid.items()},
                tune_config=tune.TuneConfig(metric="val_ppl", mode="min", scheduler=_scheduler(sweep),
                                            trial_dirname_creator=lambda t: trial_name(t.config)),
                run_config=tune.RunConfig(name="tune", storage_path=str(root), verbose=1,
                                          failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        grid = tuner.fit()
    finally:
        ray.shutdown()
    trials = []
    for result in (grid[i] for i in range(len(grid))):
        params = {k: result.config[k] for k in GRID_KEYS if k in result.config}
        trials.append({"trial": trial_name(params), **params,
                       "error": _error_line(result.error) if result.error else None,
                       "last_reported": {k: v for k, v in (result.metrics or {}).items()
                                         if k in ("epoch", "val_ppl", "recall_ppl", "node")}})
    order = {trial_name(p): i for i, p in enumerate(sweep.trials())}
    trials.sort(key=lambda t: order.get(t["trial"], len(order)))
    atomic_write_json(root / "trials.json", trials)
    path = write_sweep_leaderboard(trials, root, output_dir / "leaderboard" / "sweeps", sweep.name,
                                   sweep.description)
    return path, sum(1 for t in trials if t["error"])


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m infini_bench.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep name (configs/sweeps/<name>.yaml) or a YAML path")
    parser.add_argument("--output-dir", default=".", help="runs/sweeps/ and leaderboard/sweeps/ are written here")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep (Tuner.restore)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.config, args.output_dir)
        experiment = Path(args.output_dir).resolve() / "runs" / "sweeps" / sweep.name / "tune"
        if args.resume and not experiment.is_dir():
            raise ValueError(f"resume: no sweep {sweep.name!r} to resume in {experiment.parent}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    trials = sweep.trials()
    print(f"sweep {sweep.name} ({sweep.path}): suite {sweep.suite}, {len(trials)} trials over "
          f"{', '.join(f'{k} {v}' for k, v in sweep.grid.items())}, resources {sweep.resources} per trial, "
          f"Ray {'at ' + os.environ['RAY_ADDRESS'] if os.environ.get('RAY_ADDRESS') else 'local'}", flush=True)
    start = time.perf_counter()
    path, failed = run_sweep(sweep, Path(args.output_dir).resolve(), resume=args.resume)
    print(f"leaderboard: {path} ({(time.perf_counter() - start) / 60:.1f} min)")
    if failed:
        print(f"error: {failed} of {len(trials)} trials failed (see {path}); the others finished", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
