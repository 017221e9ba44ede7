"""Section configs check themselves, next to their fields, with the field's name in the message."""

import pytest

from infini_bench.config import DataConfig, EvalConfig, TrainConfig


@pytest.mark.parametrize("make,message", [
    (lambda: DataConfig(num_samples=0), "data.num_samples: expected a positive integer"),
    (lambda: DataConfig(val_fraction=1.0), "data.val_fraction"),
    (lambda: DataConfig(test_fraction=0.0), "data.test_fraction: expected a number between 0 and 1"),
    (lambda: DataConfig(val_fraction=0.5, test_fraction=0.5), "data.test_fraction: val_fraction"),
    (lambda: TrainConfig(min_delta=-0.01), "training.min_delta: expected 0 or more"),
    (lambda: DataConfig(seed=-3), "data.seed: expected a non-negative integer"),
    (lambda: TrainConfig(lr=0.0), "training.lr: expected a positive number"),
    (lambda: TrainConfig(weight_decay=-0.1), "training.weight_decay: expected 0 or more"),
    (lambda: TrainConfig(patience=0), "training.patience: expected a positive integer"),
    (lambda: TrainConfig(seed=-1), "training.seed: expected a non-negative integer"),
    (lambda: DataConfig(reversal_repeats=-1), "data.reversal_repeats: expected 0 or more"),
    (lambda: DataConfig(vocab_size=0), "data.vocab_size: expected a positive integer"),
    (lambda: EvalConfig(num_distractors=0), "evaluation.num_distractors: expected a positive integer"),
    (lambda: EvalConfig(retrieval_docs=0), "evaluation.retrieval_docs"),
    (lambda: EvalConfig(retrieval={"single": {"filler": [600]}}, needle_gap=512),
     "evaluation.retrieval.single.filler: expected lengths of at least 2 x evaluation.needle_gap"),
    (lambda: EvalConfig(retrieval={"needle": {"filler": [4096]}}), "evaluation.retrieval: expected a mapping"),
    (lambda: EvalConfig(retrieval={"single": {"wiki": [4096]}}), "evaluation.retrieval.single: expected a mapping"),
    (lambda: DataConfig(retrieval_mix={"single": 0}), "data.retrieval_mix: expected a mapping"),
    (lambda: TrainConfig(curriculum=({"sample_len": 64},)), "training.curriculum[0]: expected a mapping"),
    (lambda: TrainConfig(curriculum=({"sample_len": 64, "num_samples": 8, "max_epochs": 1, "batch_size": 4},)),
     "training.curriculum[0]: expected a mapping"),
    (lambda: TrainConfig(curriculum=({"sample_len": 64, "num_samples": 8, "max_epochs": 1, "lr": 0},)),
     "training.curriculum[0].lr: expected a positive number"),
    (lambda: TrainConfig(curriculum=({"sample_len": 64, "num_samples": 8, "max_epochs": 1, "retrieval_fraction": 1.5},)),
     "training.curriculum[0].retrieval_fraction: expected a number in"),
    (lambda: TrainConfig(curriculum=({"sample_len": 64, "num_samples": 8, "max_epochs": 1, "retrieval_fraction": "x"},)),
     "training.curriculum[0].retrieval_fraction: expected float"),
    (lambda: EvalConfig(retrieval_depths=(0, 120)), "evaluation.retrieval_depths: expected percentages"),
    (lambda: EvalConfig(local_control_max_length=-1), "evaluation.local_control_max_length: expected 0 or more"),
    (lambda: TrainConfig(shared_first_stage="Single Memory"), "training.shared_first_stage: needs a curriculum of"),
    (lambda: TrainConfig(first_stage_candidates=3), "training.first_stage_candidates: 3 candidates need a"),
    (lambda: TrainConfig(first_stage_candidates=0), "training.first_stage_candidates: expected a positive integer"),
    (lambda: TrainConfig(first_stage_trial_steps=0), "training.first_stage_trial_steps: expected a positive"),
    (lambda: EvalConfig(position_bins=(16, 32)), "evaluation.position_bins"),
    (lambda: DataConfig().update({"sample_len": "long"}), "data.sample_len: expected int"),
    (lambda: EvalConfig().update({"bins": [0]}), "evaluation.bins: unknown key"),
])
def test_a_bad_field_is_named(make, message):
    with pytest.raises(ValueError, match=rf"^{message.replace('[', '[[]')}"):
        make()


def test_defaults_are_valid_and_updates_keep_types():
    data = DataConfig().update({"num_samples": 10, "val_fraction": 1}, where="profiles.cpu.data")
    assert data.num_samples == 10 and isinstance(data.val_fraction, float)
    assert EvalConfig().update({"retrieval_depths": [0, 50]}).retrieval_depths == (0, 50)
    grid = EvalConfig(retrieval={"vt": {"prose": [4096, 1024]}, "single": {"filler": [1024]}})
    assert grid.retrieval_cells() == [("single", "filler", 1024), ("vt", "prose", 1024), ("vt", "prose", 4096)]
    TrainConfig(), EvalConfig()


def test_a_stage_sets_its_own_retrieval_share_and_families():
    from infini_bench.pipeline import stage_data

    data = DataConfig(retrieval_fraction=0.5, retrieval_mix={"single": 0.5, "vt": 0.5})
    copy = stage_data(data, {"sample_len": 64, "num_samples": 8, "max_epochs": 1, "retrieval_fraction": 0.95,
                             "retrieval_mix": {"single": 1.0}})
    plain = stage_data(data, {"sample_len": 128, "num_samples": 16, "max_epochs": 1})
    assert (copy.sample_len, copy.num_samples, copy.retrieval_fraction, copy.retrieval_mix) == (64, 8, 0.95,
                                                                                               {"single": 1.0})
    assert (plain.sample_len, plain.retrieval_fraction, plain.retrieval_mix) == (128, 0.5, data.retrieval_mix)


def test_the_local_control_stops_where_the_config_says():
    assert EvalConfig(retrieval_depths=(0,)).depths_at(1 << 20) == [0, "local"]
    capped = EvalConfig(retrieval_depths=(0, 50), local_control_max_length=65536)
    assert capped.depths_at(65536) == [0, 50, "local"] and capped.depths_at(1 << 20) == [0, 50]
    assert EvalConfig(local_control=False).depths_at(1024, depths=[25]) == [25]


def test_a_profile_replaces_the_model_list_and_names_the_shared_stage(tmp_path):
    from infini_bench.suites import load_run_config

    cpu = load_run_config("long", "cpu", output_dir=str(tmp_path))
    cuda = load_run_config("long", "cuda", output_dir=str(tmp_path))
    assert [m.name for m in cpu.models] == ["Pythia baseline", "Single Memory", "Multi Memory (4)",
                                            "Multi Memory (4, delta_l2)"]
    assert [m.name for m in cuda.models] == [m.name for m in cpu.models[:2]] + [
        "Single Memory (delta_l2)", *[m.name for m in cpu.models[2:]], "Hierarchical (4)"]
    assert cpu.shared_stage_model.name == "Single Memory" and cuda.shared_stage_model is None
    only = load_run_config("long", "cpu", output_dir=str(tmp_path), only_models=["multi-memory-4-delta-l2"])
    assert [m.name for m in only.models] == ["Multi Memory (4, delta_l2)"]
    assert only.shared_stage_model.name == "Single Memory"  # kept: the first stage is still its
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: bad\nbase: long-smoke\ntraining: {shared_first_stage: Nobody}\n")
    with pytest.raises(ValueError, match="^training.shared_first_stage: 'Nobody' is not a model of the suite"):
        load_run_config(str(suite), "cpu", output_dir=str(tmp_path))
