"""Suite YAML + CLI flags -> one validated RunConfig, recorded in every run directory.

A suite file (configs/suites/<name>.yaml) has the sections:
  name, description
  models:        list of {name, <InfiniPythiaConfig fields>}; `model_defaults` apply to all
  data:          DataConfig fields
  training:      TrainConfig fields
  evaluation:    EvalConfig fields
  profiles:      {cpu: {...}, cuda: {...}}: preset and section overrides picked by device
"""

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data import DataConfig
from .training import EvalConfig, TrainConfig

SUITE_KEYS = {"name", "description", "models", "model_defaults", "data", "training", "evaluation", "profiles"}
PROFILE_KEYS = {"preset", "model_defaults", "data", "training", "evaluation"}
SECTIONS = {"data": DataConfig, "training": TrainConfig, "evaluation": EvalConfig}


def config_dirs(kind: str) -> list[Path]:
    """Where configs of a kind ("suites", "sweeps", "deepspeed") are looked up: ./configs/<kind>,
    then the repository's configs/<kind>."""
    return [Path.cwd() / "configs" / kind, Path(__file__).resolve().parents[1] / "configs" / kind]


def find_config(kind: str, name: str, field: str, what: str, suffixes=(".yaml", ".yml")) -> Path:
    """The file for `name` (a name under configs/<kind>/ or a path ending in one of `suffixes`);
    ValueError naming `field` and the accepted names otherwise."""
    if name.endswith(suffixes):
        if not Path(name).is_file():
            raise ValueError(f"{field}: file {name!r} does not exist")
        return Path(name)
    for d in config_dirs(kind):
        if (d / f"{name}{suffixes[0]}").is_file():
            return d / f"{name}{suffixes[0]}"
    known = sorted({p.stem for d in config_dirs(kind) for p in d.glob(f"*{suffixes[0]}")})
    raise ValueError(f"{field}: unknown {what}{name!r}; accepted: {', '.join(known)} or a {suffixes[0]} path")


def find_suite(name: str) -> Path:
    return find_config("suites", name, "suite", "")


@dataclass
class ModelSpec:
    name: str
    overrides: dict
    order: int = 0  # place in the suite's list (leaderboard row order)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass
class RunConfig:
    suite: str
    suite_file: str
    description: str
    preset: str
    device: str
    output_dir: str
    models: list[ModelSpec]
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    num_seeds: int = 1
    model_defaults: dict = field(default_factory=dict)  # already merged into each model's overrides

    def to_dict(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model_defaults"}

    @property
    def runs_dir(self) -> Path:
        return Path(self.output_dir) / "runs" / self.suite

    @property
    def leaderboard_dir(self) -> Path:
        return Path(self.output_dir) / "leaderboard"

    def model_config(self, spec: ModelSpec, vocab_size: int | None = None):
        from .models import InfiniPythiaConfig

        known = {f.name for f in dataclasses.fields(InfiniPythiaConfig)} - {"architectures", "transformers_version"}
        unknown = sorted(set(spec.overrides) - known)
        if unknown:
            raise ValueError(f"models.{spec.name}.{unknown[0]}: unknown key; accepted: memory_type, num_memories, "
                             "use_delta_rule, infini_layers, segment_len, memory_scope, stream_update, or a GPT-NeoX "
                             "config field")
        overrides = dict(spec.overrides)
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        return InfiniPythiaConfig.from_preset(self.preset, **overrides)


def _check_type(where, value, expected):
    """Accept ints for floats; reject bools where numbers are expected."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, bool):
        raise ValueError(f"{where}: expected {expected.__name__}, got {value!r}")
    if expected is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, expected):
        raise ValueError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def _apply(section_name, obj, values: dict):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if not isinstance(values, dict):
        raise ValueError(f"{section_name}: expected a mapping of {', '.join(fields)}")
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{section_name}.{key}: unknown key; accepted: {', '.join(fields)}")
        default = getattr(obj, key)
        expected = type(default) if default is not None else str
        setattr(obj, key, value if value is None and default is None else
                _check_type(f"{section_name}.{key}", value, expected))


def _validate(config: RunConfig):
    d, t, e = config.data, config.training, config.evaluation
    for where, value in [("data.num_samples", d.num_samples), ("data.sample_len", d.sample_len),
                         ("data.vocab_size", d.vocab_size), ("training.batch_size", t.batch_size),
                         ("training.max_epochs", t.max_epochs), ("training.patience", t.patience),
                         ("evaluation.batch_size", e.batch_size), ("evaluation.num_distractors", e.num_distractors)]:
        if value < 1:
            raise ValueError(f"{where}: expected a positive integer, got {value}")
    if d.sample_len < 2:
        raise ValueError(f"data.sample_len: expected at least 2, got {d.sample_len}")
    if not 0 < d.val_fraction < 1:
        raise ValueError(f"data.val_fraction: expected a number between 0 and 1, got {d.val_fraction}")
    if d.reversal_facts < 11 or d.reversal_repeats < 0:
        raise ValueError("data.reversal_facts: expected at least 11 (10 distractors need 10 other facts)")
    if t.lr <= 0 or t.max_grad_norm <= 0 or t.weight_decay < 0:
        raise ValueError(f"training.lr / max_grad_norm: expected positive numbers, got {t.lr} / {t.max_grad_norm}")
    if t.deepspeed is not None:
        t.deepspeed = str(find_config("deepspeed", t.deepspeed, "training.deepspeed", "DeepSpeed config ",
                                      suffixes=(".json",)).resolve())
        try:
            json.loads(Path(t.deepspeed).read_text())
        except ValueError as error:
            raise ValueError(f"training.deepspeed: {t.deepspeed} is not valid JSON ({error})") from None
    if not all(isinstance(b, int) and b >= 0 for b in e.position_bins) or 0 not in e.position_bins:
        raise ValueError(f"evaluation.position_bins: expected non-negative integers starting at 0, got "
                         f"{list(e.position_bins)}")
    if not 0 <= d.passkey_fraction < 1:
        raise ValueError(f"data.passkey_fraction: expected a number in [0, 1), got {d.passkey_fraction}")
    _validate_curriculum(t.curriculum)
    for where, values in [("evaluation.passkey_lengths", e.passkey_lengths),
                          ("evaluation.passkey_depths", e.passkey_depths)]:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"{where}: expected a list of non-negative integers, got {list(values)}")
    if any(v < 64 for v in e.passkey_lengths):
        raise ValueError(f"evaluation.passkey_lengths: expected lengths of at least 64 tokens, got "
                         f"{list(e.passkey_lengths)}")
    if any(v > 100 for v in e.passkey_depths):
        raise ValueError(f"evaluation.passkey_depths: expected percentages 0..100, got {list(e.passkey_depths)}")
    if e.passkey_docs < 1 or e.long_ppl_length < 0:
        raise ValueError("evaluation.passkey_docs / long_ppl_length: expected a positive integer / 0 or more")
    if e.long_ppl_length and (not all(isinstance(b, int) and b >= 0 for b in e.long_ppl_bins)
                              or 0 not in e.long_ppl_bins):
        raise ValueError(f"evaluation.long_ppl_bins: expected non-negative integers starting at 0, got "
                         f"{list(e.long_ppl_bins)}")
    from .data.sources import parse_source

    parse_source(d.source)
    if not config.models:
        raise ValueError("models: expected a non-empty list")
    slugs = set()
    shortest = min([d.sample_len] + [stage["sample_len"] for stage in t.curriculum])
    for spec in config.models:
        model = config.model_config(spec)
        if model.memory_type != "none" and model.segment_len > shortest:
            raise ValueError(f"segment_len: {model.segment_len} (model {spec.name!r}) is larger than the shortest "
                             f"sample ({shortest} tokens); accepted: 1..{shortest}")
        if spec.slug in slugs:
            raise ValueError(f"models: two models named {spec.name!r}")
        slugs.add(spec.slug)
    _check_writable(Path(config.output_dir))


STAGE_KEYS = ("sample_len", "num_samples", "max_epochs")


def _validate_curriculum(stages):
    for i, stage in enumerate(stages):
        where = f"training.curriculum[{i}]"
        if not isinstance(stage, dict) or set(stage) != set(STAGE_KEYS):
            raise ValueError(f"{where}: expected a mapping with exactly the keys {', '.join(STAGE_KEYS)}, got "
                             f"{stage!r}")
        for key in STAGE_KEYS:
            value = stage[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "sample_len" else 1):
                raise ValueError(f"{where}.{key}: expected a positive integer, got {value!r}")


def _check_writable(path: Path):
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output-dir: {str(path)!r} is not writable")


def load_run_config(suite: str, device: str, preset: str | None = None, data: str | None = None,
                    output_dir: str = ".", seed: int | None = None, deepspeed: str | None = None,
                    max_epochs: int | None = None, only_models: list[str] | None = None,
                    num_seeds: int = 1) -> RunConfig:
    """Resolve a suite for a device ("cpu" or "cuda"); raises ValueError naming the bad field."""
    from .models import PRESETS

    path = find_suite(suite)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"suite: {path} is not valid YAML ({error.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"suite: {path} must be a mapping with keys {', '.join(sorted(SUITE_KEYS))}")
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise ValueError(f"suite.{sorted(unknown)[0]}: unknown key; accepted: {', '.join(sorted(SUITE_KEYS))}")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict) or set(profiles) - {"cpu", "cuda"}:
        raise ValueError("suite.profiles: expected a mapping with keys cpu, cuda")
    profile = profiles.get(device) or {}
    if set(profile) - PROFILE_KEYS:
        raise ValueError(f"suite.profiles.{device}.{sorted(set(profile) - PROFILE_KEYS)[0]}: unknown key; "
                         f"accepted: {', '.join(sorted(PROFILE_KEYS))}")

    config = RunConfig(suite=raw.get("name", path.stem), suite_file=str(path), description=raw.get("description", ""),
                       preset=preset or profile.get("preset", "pythia-70m"), device=device, output_dir=output_dir,
                       models=[])
    if config.preset not in PRESETS:
        raise ValueError(f"preset: unknown {config.preset!r}; accepted: {', '.join(PRESETS)}")
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        _apply(name, section, raw.get(name) or {})
        _apply(f"profiles.{device}.{name}", section, profile.get(name) or {})
    if data is not None:
        config.data.source = data
    if seed is not None:
        config.data.seed = config.training.seed = seed
    if deepspeed is not None:
        config.training.deepspeed = deepspeed
    if max_epochs is not None:
        config.training.max_epochs = max_epochs
    if num_seeds < 1:
        raise ValueError(f"seeds: expected a positive integer, got {num_seeds}")
    config.num_seeds = num_seeds
    defaults = {**(raw.get("model_defaults") or {}), **(profile.get("model_defaults") or {})}
    config.model_defaults = defaults
    for i, entry in enumerate(raw.get("models") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"models[{i}]: expected a mapping with a 'name'")
        overrides = {**defaults, **{k: v for k, v in entry.items() if k != "name"}}
        config.models.append(ModelSpec(entry["name"], overrides, order=i))
    if only_models:
        slugs = [m.slug for m in config.models]
        unknown = [m for m in only_models if m not in slugs]
        if unknown:
            raise ValueError(f"models: unknown {unknown[0]!r}; accepted: {', '.join(slugs)}")
        config.models = [m for m in config.models if m.slug in only_models]
    try:
        _validate(config)
    except TypeError as error:
        raise ValueError(f"models: {error}") from None
    return config
