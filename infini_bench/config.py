"""Section configs of a suite (data, training, evaluation): fields, defaults, self-validation.

Every default is written here once; the evaluation code, the lm-eval tasks and the suite
files take them from these classes. This module imports neither torch nor transformers
(tested): a section can be made and checked anywhere, the lm-eval task helpers included.
Each `check()` raises ValueError naming the bad field as `<section>.<field>`.
"""

import dataclasses
from dataclasses import dataclass

REFERENCE_BINS = (0, 16, 32, 64, 96)        # the reference's position bins (the last runs to the end)
PASSKEY_DEPTHS = (0, 25, 50, 75, 100)       # needle depths, percent of the haystack
NUM_DISTRACTORS = 10                        # wrong answers ranked against each reversal answer
STAGE_KEYS = ("sample_len", "num_samples", "max_epochs")


def _check_type(where, value, expected):
    """`value` as `expected` (ints accepted for floats, lists for tuples); bools are never numbers."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, bool):
        raise ValueError(f"{where}: expected {expected.__name__}, got {value!r}")
    if expected is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, expected):
        raise ValueError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def _positive(where, value, minimum=1):
    if value < minimum:
        raise ValueError(f"{where}: expected a positive integer, got {value}")


def _int_list(where, values, what="non-negative integers"):
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{where}: expected a list of {what}, got {list(values)}")


class Section:
    """A suite section: checks itself when made; `update` sets fields from a YAML mapping with
    type checks (the caller checks again once every override is in)."""

    section = ""

    def __post_init__(self):
        self.check()

    def check(self):
        raise NotImplementedError

    def update(self, values: dict, where: str | None = None):
        where = where or self.section
        fields = [f.name for f in dataclasses.fields(self)]
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping of {', '.join(fields)}")
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f"{where}.{key}: unknown key; accepted: {', '.join(fields)}")
            default = getattr(self, key)
            expected = type(default) if default is not None else str
            setattr(self, key, value if value is None and default is None else
                    _check_type(f"{where}.{key}", value, expected))
        return self


@dataclass
class DataConfig(Section):
    section = "data"

    source: str = "embedded"       # embedded | pile | pg19 | pile:<local mirror> | a local file or folder
    num_samples: int = 5000
    sample_len: int = 256
    val_fraction: float = 0.1     # early stopping and checkpoint selection
    test_fraction: float = 0.1    # the leaderboard's held-out numbers
    tokenizer: str = "pythia"      # "pythia" (trained BPE offline), "bpe", or a hub name / local path
    vocab_size: int = 4096         # of a trained BPE tokenizer
    reversal_facts: int = 33       # trained reversal facts, and as many control facts (never trained)
    reversal_relations: int = 3    # relations they are spread over (each needs num_distractors + 1 facts)
    reversal_repeats: int = 10
    passkey_fraction: float = 0.0  # of the samples, pass-key documents (needle at a random depth)
    seed: int = 42

    def check(self):
        for name in ("num_samples", "sample_len", "vocab_size"):
            _positive(f"data.{name}", getattr(self, name))
        if self.sample_len < 2:
            raise ValueError(f"data.sample_len: expected at least 2, got {self.sample_len}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected a number between 0 and 1, got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.test_fraction: val_fraction + test_fraction must leave training samples, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        _positive("data.reversal_relations", self.reversal_relations)
        if self.reversal_repeats < 0:
            raise ValueError(f"data.reversal_repeats: expected 0 or more, got {self.reversal_repeats}")
        if not 0 <= self.passkey_fraction < 1:
            raise ValueError(f"data.passkey_fraction: expected a number in [0, 1), got {self.passkey_fraction}")
        if self.seed < 0:
            raise ValueError(f"data.seed: expected a non-negative integer, got {self.seed}")
        return self


@dataclass
class TrainConfig(Section):
    section = "training"

    lr: float = 1e-4
    batch_size: int = 8            # global: split over the data-parallel processes
    max_epochs: int = 30
    patience: int = 1              # epochs without an improvement of more than min_delta before stopping
    min_delta: float = 0.0         # validation PPL
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01     # torch's AdamW default, as in the reference
    seed: int = 42
    logging_steps: int = 50
    deepspeed: str | None = None   # a name under configs/deepspeed/ or a .json path
    # Length curriculum: stages {sample_len, num_samples, max_epochs} trained in order (short
    # first), each from the model the previous one left; empty: one stage on the data section.
    curriculum: tuple = ()

    def check(self):
        for name in ("batch_size", "max_epochs", "patience", "logging_steps"):
            _positive(f"training.{name}", getattr(self, name))
        for name in ("lr", "max_grad_norm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"training.{name}: expected a positive number, got {getattr(self, name)}")
        if self.min_delta < 0:
            raise ValueError(f"training.min_delta: expected 0 or more, got {self.min_delta}")
        if self.weight_decay < 0:
            raise ValueError(f"training.weight_decay: expected 0 or more, got {self.weight_decay}")
        if self.seed < 0:
            raise ValueError(f"training.seed: expected a non-negative integer, got {self.seed}")
        for i, stage in enumerate(self.curriculum):
            where = f"training.curriculum[{i}]"
            if not isinstance(stage, dict) or set(stage) != set(STAGE_KEYS):
                raise ValueError(f"{where}: expected a mapping with exactly the keys {', '.join(STAGE_KEYS)}, "
                                 f"got {stage!r}")
            for key in STAGE_KEYS:
                value = stage[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "sample_len" else 1):
                    raise ValueError(f"{where}.{key}: expected a positive integer, got {value!r}")
        return self


@dataclass
class EvalConfig(Section):
    section = "evaluation"

    batch_size: int = 16                       # stream scope evaluates with the training batch instead
    position_bins: tuple = REFERENCE_BINS
    num_distractors: int = NUM_DISTRACTORS
    reversal: bool = True                      # reversal-curse metrics
    passkey_lengths: tuple = ()                # pass-key grid: lengths x depths, docs per cell
    passkey_depths: tuple = PASSKEY_DEPTHS
    passkey_docs: int = 1
    long_ppl_length: int = 0                   # one document of this many tokens, PPL by position bucket
    long_ppl_bins: tuple = ()

    def check(self):
        _positive("evaluation.batch_size", self.batch_size)
        _positive("evaluation.num_distractors", self.num_distractors)
        if not all(isinstance(b, int) and b >= 0 for b in self.position_bins) or 0 not in self.position_bins:
            raise ValueError(f"evaluation.position_bins: expected non-negative integers starting at 0, got "
                             f"{list(self.position_bins)}")
        _int_list("evaluation.passkey_lengths", self.passkey_lengths)
        _int_list("evaluation.passkey_depths", self.passkey_depths)
        if any(v < 64 for v in self.passkey_lengths):
            raise ValueError(f"evaluation.passkey_lengths: expected lengths of at least 64 tokens, got "
                             f"{list(self.passkey_lengths)}")
        if any(v > 100 for v in self.passkey_depths):
            raise ValueError(f"evaluation.passkey_depths: expected percentages 0..100, got "
                             f"{list(self.passkey_depths)}")
        if self.passkey_docs < 1 or self.long_ppl_length < 0:
            raise ValueError("evaluation.passkey_docs / long_ppl_length: expected a positive integer / 0 or more")
        if self.long_ppl_length and (not all(isinstance(b, int) and b >= 0 for b in self.long_ppl_bins)
                                     or 0 not in self.long_ppl_bins):
            raise ValueError(f"evaluation.long_ppl_bins: expected non-negative integers starting at 0, got "
                             f"{list(self.long_ppl_bins)}")
        return self
