"""Section configs of a suite (data, training, evaluation): fields, defaults, self-validation.

Every default is written here once; the evaluation code, the lm-eval tasks and the suite
files take them from these classes. This module imports neither torch nor transformers
(tested): a section can be made and checked anywhere, the lm-eval task helpers included.
Each `check()` raises ValueError naming the bad field as `<section>.<field>`.
"""

import dataclasses
from dataclasses import dataclass, field

REFERENCE_BINS = (0, 16, 32, 64, 96)        # the reference's position bins (the last runs to the end)
RETRIEVAL_DEPTHS = (0, 25, 50, 75)          # needle depths, percent of the haystack before the needle gap
LOCAL = "local"                             # the local control's depth: needles right before the question
FAMILIES = ("single", "multikey", "multivalue", "multiquery", "vt")  # retrieval task families (data/needles.py)
HAYSTACKS = ("filler", "prose", "heldout")  # retrieval haystack kinds (data/needles.py)
NEEDLE_GAP = 512                            # tokens between the needles and the question: 2 segments of 256
LONG_PPL_DISTANCE_BINS = (0, 2048, 16384, 131072)  # distance since statement: <=2K, 2K-16K, 16K-128K, 128K-
NUM_DISTRACTORS = 10                        # wrong answers ranked against each reversal answer
STAGE_KEYS = ("sample_len", "num_samples", "max_epochs")
STAGE_DATA_KEYS = ("retrieval_fraction", "retrieval_mix")  # optional: the data section's, for one stage
STAGE_OPTIONAL_KEYS = (*STAGE_DATA_KEYS, "lr")                # and the stage's own learning rate


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
    retrieval_fraction: float = 0.0  # of the samples, retrieval documents (needles at random depths)
    retrieval_mix: dict = field(default_factory=lambda: {"single": 1.0})  # family -> share of them
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
        if not 0 <= self.retrieval_fraction < 1:
            raise ValueError(f"data.retrieval_fraction: expected a number in [0, 1), got {self.retrieval_fraction}")
        if (not self.retrieval_mix or set(self.retrieval_mix) - set(FAMILIES)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                           for v in self.retrieval_mix.values())):
            raise ValueError(f"data.retrieval_mix: expected a mapping of families ({', '.join(FAMILIES)}) to "
                             f"positive shares, got {self.retrieval_mix!r}")
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
    # A stage may also set retrieval_fraction and retrieval_mix for its own samples (a first stage
    # of one-segment pass-key documents teaches copying before the memory is asked to carry).
    curriculum: tuple = ()
    # The name of a suite model that trains the curriculum's first stage once for the whole suite:
    # every model starts its second stage from the weights it left (the parameters of the same name
    # and shape; the rest, such as another memory rule's, keep their own initialisation).
    shared_first_stage: str | None = None
    # Shared first stages trained (seeds seed, seed + 1, ...; side by side on CPU cores): a memory
    # learns to read after some first stages and not after others (README). Each candidate trains
    # first_stage_trial_steps steps of the second stage, then answers single pass keys at 1K tokens,
    # needle at depth 0%, on validation documents; the best (accuracy, then mean answer
    # log-probability) is the shared first stage.
    first_stage_candidates: int = 1
    first_stage_trial_steps: int = 250

    def check(self):
        if self.shared_first_stage is not None and len(self.curriculum) < 2:
            raise ValueError(f"training.shared_first_stage: needs a curriculum of at least two stages, got "
                             f"{len(self.curriculum)}")
        if self.first_stage_candidates > 1 and self.shared_first_stage is None:
            raise ValueError(f"training.first_stage_candidates: {self.first_stage_candidates} candidates need a "
                             f"shared_first_stage to choose")
        for name in ("batch_size", "max_epochs", "patience", "logging_steps", "first_stage_candidates",
                     "first_stage_trial_steps"):
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
            if (not isinstance(stage, dict) or not set(STAGE_KEYS) <= set(stage)
                    or set(stage) - set(STAGE_KEYS) - set(STAGE_OPTIONAL_KEYS)):
                raise ValueError(f"{where}: expected a mapping with the keys {', '.join(STAGE_KEYS)} and optionally "
                                 f"{', '.join(STAGE_OPTIONAL_KEYS)}, got {stage!r}")
            if "lr" in stage and (isinstance(stage["lr"], bool) or not isinstance(stage["lr"], (int, float))
                                  or stage["lr"] <= 0):
                raise ValueError(f"{where}.lr: expected a positive number, got {stage['lr']!r}")
            for key in STAGE_KEYS:
                value = stage[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "sample_len" else 1):
                    raise ValueError(f"{where}.{key}: expected a positive integer, got {value!r}")
            for key in set(stage) & set(STAGE_DATA_KEYS):
                try:
                    DataConfig(**{key: _check_type(f"{where}.{key}", stage[key], type(getattr(DataConfig(), key)))})
                except ValueError as error:
                    raise ValueError(str(error).replace(f"data.{key}", f"{where}.{key}")) from None
        return self

    def for_stage(self, stage: dict) -> "TrainConfig":
        """This section as one curriculum stage trains: its epochs, its own lr if it sets one
        (a shared first stage keeps its lr while a sweep varies the others'), no curriculum and
        one model (no first-stage candidates)."""
        return dataclasses.replace(self, max_epochs=stage["max_epochs"], lr=float(stage.get("lr", self.lr)),
                                   curriculum=(), shared_first_stage=None, first_stage_candidates=1)


@dataclass
class EvalConfig(Section):
    section = "evaluation"

    batch_size: int = 16                       # stream scope evaluates with the training batch instead
    position_bins: tuple = REFERENCE_BINS
    num_distractors: int = NUM_DISTRACTORS
    reversal: bool = True                      # reversal-curse metrics
    # Retrieval grid: family -> haystack -> lengths; every cell (length x depth) has
    # retrieval_docs documents, and a local-control cell (needles right before the question).
    retrieval: dict = field(default_factory=dict)
    retrieval_depths: tuple = RETRIEVAL_DEPTHS
    retrieval_docs: int = 20
    local_control: bool = True
    local_control_max_length: int = 0          # the local control only at lengths up to this (0: at every length)
    needle_gap: int = NEEDLE_GAP               # at least 2 x every memory model's segment_len (checked)
    long_ppl_length: int = 0                   # a fact-recall document of this many tokens (0: none)
    long_ppl_bins: tuple = LONG_PPL_DISTANCE_BINS  # its recall tokens binned by distance since statement
    # Memory probes (infini_bench/probes.py): single-NIAH documents of these lengths, the needle
    # at depth 0, probe_docs of them per length, followed through every Infini layer's memory.
    probe_lengths: tuple = ()
    probe_haystack: str = "filler"
    probe_docs: int = 4

    def check(self):
        _positive("evaluation.batch_size", self.batch_size)
        _positive("evaluation.num_distractors", self.num_distractors)
        if not all(isinstance(b, int) and b >= 0 for b in self.position_bins) or 0 not in self.position_bins:
            raise ValueError(f"evaluation.position_bins: expected non-negative integers starting at 0, got "
                             f"{list(self.position_bins)}")
        _positive("evaluation.needle_gap", self.needle_gap)
        self._check_retrieval()
        _int_list("evaluation.retrieval_depths", self.retrieval_depths)
        if not self.retrieval_depths or any(v > 100 for v in self.retrieval_depths):
            raise ValueError(f"evaluation.retrieval_depths: expected percentages 0..100, got "
                             f"{list(self.retrieval_depths)}")
        _positive("evaluation.retrieval_docs", self.retrieval_docs)
        if self.local_control_max_length < 0:
            raise ValueError(f"evaluation.local_control_max_length: expected 0 or more, got "
                             f"{self.local_control_max_length}")
        if self.long_ppl_length < 0:
            raise ValueError(f"evaluation.long_ppl_length: expected 0 or more, got {self.long_ppl_length}")
        if self.long_ppl_length and (not all(isinstance(b, int) and b >= 0 for b in self.long_ppl_bins)
                                     or 0 not in self.long_ppl_bins):
            raise ValueError(f"evaluation.long_ppl_bins: expected non-negative integers starting at 0, got "
                             f"{list(self.long_ppl_bins)}")
        _int_list("evaluation.probe_lengths", self.probe_lengths, "lengths")
        if self.probe_lengths and min(self.probe_lengths) < 2 * self.needle_gap:
            raise ValueError(f"evaluation.probe_lengths: expected lengths of at least 2 x evaluation.needle_gap = "
                             f"{2 * self.needle_gap} tokens, got {list(self.probe_lengths)}")
        if self.probe_haystack not in HAYSTACKS:
            raise ValueError(f"evaluation.probe_haystack: expected one of {', '.join(HAYSTACKS)}, "
                             f"got {self.probe_haystack!r}")
        _positive("evaluation.probe_docs", self.probe_docs)
        return self

    def _check_retrieval(self):
        where = "evaluation.retrieval"
        if not isinstance(self.retrieval, dict) or set(self.retrieval) - set(FAMILIES):
            raise ValueError(f"{where}: expected a mapping of families ({', '.join(FAMILIES)}) to "
                             f"{{haystack: [lengths]}}, got {self.retrieval!r}")
        for family, haystacks in self.retrieval.items():
            if not isinstance(haystacks, dict) or not haystacks or set(haystacks) - set(HAYSTACKS):
                raise ValueError(f"{where}.{family}: expected a mapping of haystacks ({', '.join(HAYSTACKS)}) "
                                 f"to lists of lengths, got {haystacks!r}")
            for haystack, lengths in haystacks.items():
                _int_list(f"{where}.{family}.{haystack}", lengths, "lengths")
                if not lengths or min(lengths) < 2 * self.needle_gap:
                    raise ValueError(f"{where}.{family}.{haystack}: expected lengths of at least 2 x "
                                     f"evaluation.needle_gap = {2 * self.needle_gap} tokens, got {lengths!r}")

    def retrieval_cells(self) -> list[tuple[str, str, int]]:
        """(family, haystack, length) of the grid, in a fixed order."""
        return [(family, haystack, length) for family in FAMILIES for haystack in HAYSTACKS
                for length in sorted(self.retrieval.get(family, {}).get(haystack, ()))]

    def depths_at(self, length: int, depths=None) -> list:
        """The depths scored at `length`: `depths` (default retrieval_depths), then the local
        control wherever it is kept (local_control, up to local_control_max_length)."""
        local = self.local_control and (not self.local_control_max_length or length <= self.local_control_max_length)
        return [*(depths or self.retrieval_depths), *([LOCAL] if local else [])]

    def probe_cells(self) -> list[tuple[str, str, int]]:
        """(family, haystack, length) of the probed documents."""
        return [("single", self.probe_haystack, length) for length in sorted(self.probe_lengths)]
