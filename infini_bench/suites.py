"""Suite YAML + CLI flags -> one validated RunConfig, recorded in every run directory.

A suite file (configs/suites/<name>.yaml) has the keys:
  name, description
  base:          optional: another suite whose file this one extends (sections are merged
                 key by key, `models` and lists are replaced whole)
  models:        list of {name, <InfiniPythiaConfig fields>}; `model_defaults` apply to all
  data:          DataConfig fields          (infini_bench/config.py)
  training:      TrainConfig fields
  evaluation:    EvalConfig fields
  profiles:      {cpu: {...}, cuda: {...}}: preset and section overrides picked by device (a
                 profile's `models`, if it has one, replaces the suite's list)
Each section validates itself; this module adds the rules that span sections and the checks
of what a config names outside itself (the data source, DeepSpeed file, output folder).
"""

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import DataConfig, EvalConfig, TrainConfig
from .data.reversal import RELATIONS
from .data.sources import parse_source
from .models import PRESETS, InfiniPythiaConfig
from .paths import check_writable, find_config

SUITE_KEYS = {"name", "description", "base", "models", "model_defaults", "data", "training", "evaluation",
              "profiles"}
PROFILE_KEYS = {"preset", "model_defaults", "models", "data", "training", "evaluation"}
MODEL_KEYS = sorted({f.name for f in dataclasses.fields(InfiniPythiaConfig)} - {"architectures", "transformers_version"})


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
    shared_stage_model: ModelSpec | None = None  # the model training.shared_first_stage names (kept under --models)
    suite_models: list[str] = field(default_factory=list)  # every model's name, --models or not: the leaderboard's rows

    def to_dict(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model_defaults", "suite_models")}

    @property
    def runs_dir(self) -> Path:
        return Path(self.output_dir) / "runs" / self.suite

    @property
    def leaderboard_dir(self) -> Path:
        return Path(self.output_dir) / "leaderboard"

    def model_config(self, spec: ModelSpec, vocab_size: int | None = None) -> InfiniPythiaConfig:
        unknown = sorted(set(spec.overrides) - set(MODEL_KEYS))
        if unknown:
            raise ValueError(f"models.{spec.name}.{unknown[0]}: unknown key; accepted: memory_type, num_memories, "
                             "use_delta_rule, memory_rule, infini_layers, segment_len, memory_scope, stream_update, "
                             "bptt_segments, or a GPT-NeoX config field")
        overrides = dict(spec.overrides)
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        try:
            return InfiniPythiaConfig.from_preset(self.preset, **overrides)
        except TypeError as error:
            raise ValueError(f"models.{spec.name}: {error}") from None


def _validate(config: RunConfig):
    """The rules that span sections, then what the config names outside itself."""
    d, t, e = config.data, config.training, config.evaluation
    if d.reversal_relations > len(RELATIONS):
        raise ValueError(f"data.reversal_relations: expected at most {len(RELATIONS)}, got {d.reversal_relations}")
    per_relation = d.reversal_facts // d.reversal_relations
    if per_relation < e.num_distractors + 1:
        raise ValueError(f"data.reversal_facts: expected at least {d.reversal_relations * (e.num_distractors + 1)} "
                         f"({d.reversal_relations} relations, each with {e.num_distractors} distractors from "
                         f"{e.num_distractors} other facts of its relation), got {d.reversal_facts}")
    if not config.models:
        raise ValueError("models: expected a non-empty list")
    slugs = set()
    shortest = min([d.sample_len] + [stage["sample_len"] for stage in t.curriculum])
    for spec in config.models:
        model = config.model_config(spec)
        if model.memory_type != "none" and model.segment_len > shortest:
            raise ValueError(f"segment_len: {model.segment_len} (model {spec.name!r}) is larger than the shortest "
                             f"sample ({shortest} tokens); accepted: 1..{shortest}")
        if model.memory_type != "none" and e.retrieval and e.needle_gap < 2 * model.segment_len:
            raise ValueError(f"evaluation.needle_gap: {e.needle_gap} tokens would leave a needle within two segments "
                             f"of the question for model {spec.name!r} (segment_len {model.segment_len}); accepted: "
                             f"at least {2 * model.segment_len}")
        if spec.slug in slugs:
            raise ValueError(f"models: two models named {spec.name!r}")
        slugs.add(spec.slug)
    parse_source(d.source)
    if t.deepspeed is not None:
        t.deepspeed = str(find_config("deepspeed", t.deepspeed, "training.deepspeed", "DeepSpeed config ",
                                      suffixes=(".json",)).resolve())
        try:
            json.loads(Path(t.deepspeed).read_text())
        except ValueError as error:
            raise ValueError(f"training.deepspeed: {t.deepspeed} is not valid JSON ({error})") from None
    check_writable(Path(config.output_dir))


def _merge(base: dict, own: dict) -> dict:
    """`own` over `base`: mappings merged key by key, anything else (lists included) replaced."""
    merged = dict(base)
    for key, value in own.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def read_suite(path: Path, seen=()) -> dict:
    """A suite file's mapping, with its `base` suite (recursively) merged underneath."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"suite: {path} is not valid YAML ({error.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"suite: {path} must be a mapping with keys {', '.join(sorted(SUITE_KEYS))}")
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise ValueError(f"suite.{sorted(unknown)[0]}: unknown key; accepted: {', '.join(sorted(SUITE_KEYS))}")
    if "base" not in raw:
        return raw
    if not isinstance(raw["base"], str):
        raise ValueError(f"suite.base: expected the name of a suite, got {raw['base']!r}")
    base = raw["base"]
    if base.endswith((".yaml", ".yml")) and not Path(base).is_absolute():
        base = str(path.parent / base)  # a path is relative to the suite file, as lm-eval's `include:`
    base_path = find_config("suites", base, "suite.base", "")
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise ValueError(f"suite.base: {raw['base']!r} extends itself")
    inherited = read_suite(base_path, (*seen, path.resolve()))
    own = {k: v for k, v in raw.items() if k != "base"}
    return _merge({k: v for k, v in inherited.items() if k not in ("name", "description")}, own)


def load_run_config(suite: str, device: str, preset: str | None = None, data: str | None = None,
                    output_dir: str = ".", seed: int | None = None, deepspeed: str | None = None,
                    max_epochs: int | None = None, only_models: list[str] | None = None,
                    num_seeds: int = 1) -> RunConfig:
    """Resolve a suite for a device ("cpu" or "cuda"); raises ValueError naming the bad field."""
    path = find_suite(suite)
    raw = read_suite(path)
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
    for section in (config.data, config.training, config.evaluation):
        section.update(raw.get(section.section) or {})
        section.update(profile.get(section.section) or {}, where=f"profiles.{device}.{section.section}")
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
    for section in (config.data, config.training, config.evaluation):
        section.check()
    defaults = {**(raw.get("model_defaults") or {}), **(profile.get("model_defaults") or {})}
    config.model_defaults = defaults
    for i, entry in enumerate(profile.get("models", raw.get("models")) or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"models[{i}]: expected a mapping with a 'name'")
        overrides = {**defaults, **{k: v for k, v in entry.items() if k != "name"}}
        config.models.append(ModelSpec(entry["name"], overrides, order=i))
    if config.training.shared_first_stage is not None:
        named = [m for m in config.models if m.name == config.training.shared_first_stage]
        if not named:
            raise ValueError(f"training.shared_first_stage: {config.training.shared_first_stage!r} is not a model of "
                             f"the suite; accepted: {', '.join(m.name for m in config.models)}")
        config.shared_stage_model = named[0]
    config.suite_models = [m.name for m in config.models]
    if only_models:
        slugs = [m.slug for m in config.models]
        unknown = [m for m in only_models if m not in slugs]
        if unknown:
            raise ValueError(f"models: unknown {unknown[0]!r}; accepted: {', '.join(slugs)}")
        config.models = [m for m in config.models if m.slug in only_models]
    _validate(config)
    return config
