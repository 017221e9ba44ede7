"""Training with HF Trainer in the reference protocol, evaluation through `evaluation.py`.

Reference defaults: AdamW, lr 1e-4, batch 8, gradient clipping 1.0, constant learning rate,
up to 30 epochs, evaluation each epoch, early stopping with patience 1 on validation PPL, best
checkpoint kept. Stream-scope memory is reset at each epoch start and before each evaluation.
"""

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.tensorboard import SummaryWriter
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from . import distributed
from .config import EvalConfig, TrainConfig
from .device import autocast_dtype
from .evaluation import lm_metrics, reset_memory, sample_token_nll
from .io import append_jsonl, atomic_write_json, atomic_write_text


def collate(features):
    """Fixed-length samples: labels are the inputs (the model shifts them)."""
    ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


class ResetStreamMemory(TrainerCallback):
    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        reset_memory(model)


class EpochLog(TrainerCallback):
    """One jsonl line per epoch: train PPL, validation metrics (the main process's callback)."""

    def __init__(self, path: Path):
        self.path = path

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        append_jsonl(self.path, {"epoch": round(state.epoch or 0), "step": state.global_step, **metrics})


class NonFiniteLoss(RuntimeError):
    """Training stopped on a NaN or infinite loss."""


class InfiniTrainer(Trainer):
    """Trainer whose evaluation is infini-bench's own (per-token losses, recall and position PPL)."""

    def __init__(self, *args, eval_config: EvalConfig = None, eval_batch: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_config, self.eval_batch = eval_config, eval_batch
        self._train_loss_sum, self._train_loss_count = 0.0, 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = (result[0] if return_outputs else result).detach().float().item()
            if not math.isfinite(loss):
                kept = latest_checkpoint(Path(self.args.output_dir))
                raise NonFiniteLoss(f"training: loss is {loss} at step {self.state.global_step + 1} "
                                    f"(epoch {self.state.epoch:.2f}); stopped. Last good checkpoint: "
                                    f"{kept or 'none yet'}")
            self._train_loss_sum += loss
            self._train_loss_count += 1
        return result

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        device, validation = self.args.device, self.eval_dataset
        nll = sample_token_nll(self.model, validation["input_ids"], self.eval_batch, device,
                               autocast_dtype(device) if self.args.bf16 else None)
        lm = lm_metrics(nll, validation["recall"], self.eval_config.position_bins, len(validation[0]["input_ids"]))
        metrics = {f"{metric_key_prefix}_ppl": lm["ppl"], f"{metric_key_prefix}_recall_ppl": lm.get("recall_ppl")}
        metrics.update({f"{metric_key_prefix}_ppl_pos_{k}": v for k, v in lm["position_ppl"].items()})
        if self._train_loss_count:
            metrics["train_ppl"] = math.exp(self._train_loss_sum / self._train_loss_count)
            self._train_loss_sum, self._train_loss_count = 0.0, 0
        self.log({k: v for k, v in metrics.items() if v is not None})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def latest_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint (its trainer_state.json is written last)."""
    done = [p for p in trainer_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def check_checkpoint(checkpoint: Path):
    """Raise ValueError (one line, naming the file) if a checkpoint cannot be resumed from."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        load_file(checkpoint / "model.safetensors")
    except Exception as error:  # noqa: BLE001 - any failure means the same thing here
        raise ValueError(f"checkpoint: {checkpoint} is truncated or corrupted ({error.__class__.__name__}); "
                         "delete it to resume from an earlier one or to retrain") from None


def train(model, data, run_dir: Path, config: TrainConfig, eval_config: EvalConfig, device: torch.device,
          resume: bool = False, callbacks=()):
    """Train `model` on `data` (a DataBundle) into `run_dir`; the best model ends up in `run_dir`.

    With `resume`, training continues from the newest checkpoint in run_dir/trainer (model,
    optimizer, scheduler, RNG and early-stopping state; checkpoints are taken at epoch ends,
    where the stream memory is reset anyway), and metrics.jsonl is cut back to that epoch.
    `callbacks` are extra Trainer callbacks (a sweep's report to Ray Tune).
    Under a launcher (DeepSpeed, torchrun) every process calls this; `config.batch_size` is the
    global batch, each process takes its share, and only the main process writes files.
    Returns the best model and the training time of this call."""
    distributed.init(device)
    cuda = device.type == "cuda"
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=per_process_batch(config.batch_size),
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        lr_scheduler_type="constant",
        num_train_epochs=config.max_epochs,
        max_grad_norm=config.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        load_best_model_at_end=True,
        metric_for_best_model="eval_ppl",
        greater_is_better=False,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        tf32=cuda or None,
        deepspeed=config.deepspeed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    epoch_log = run_dir / "metrics.jsonl"
    checkpoint = latest_checkpoint(run_dir / "trainer") if resume else None
    distributed.barrier()  # every process has picked the checkpoint before the main one clears
    if distributed.is_main():
        if checkpoint is None:
            shutil.rmtree(run_dir / "trainer", ignore_errors=True)
            epoch_log.unlink(missing_ok=True)
        else:
            epoch = json.loads((checkpoint / "trainer_state.json").read_text())["epoch"]
            lines = epoch_log.read_text().splitlines() if epoch_log.exists() else []
            atomic_write_text(epoch_log, "".join(f"{x}\n" for x in lines if json.loads(x)["epoch"] <= round(epoch)))
            print(f"resuming from {checkpoint} (epoch {round(epoch)})", flush=True)
    distributed.barrier()
    logs = [EpochLog(epoch_log), TensorBoardCallback(SummaryWriter(str(run_dir / "tensorboard")))] \
        if distributed.is_main() else []
    trainer = InfiniTrainer(
        model=model, args=args, train_dataset=data.train, data_collator=collate,
        eval_dataset=data.validation, eval_config=eval_config, eval_batch=eval_batch_size(model, config, eval_config),
        callbacks=[ResetStreamMemory(), EarlyStoppingCallback(early_stopping_patience=config.patience,
                                                              early_stopping_threshold=config.min_delta),
                   *logs, *callbacks],
    )
    if trainer.is_deepspeed_enabled:
        plugin = trainer.accelerator.state.deepspeed_plugin
        print(f"DeepSpeed ZeRO stage {plugin.zero_stage} ({Path(config.deepspeed).name}) on "
              f"{distributed.world_size()} process(es), {args.per_device_train_batch_size} samples each per step",
              flush=True)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    elapsed = time.perf_counter() - start
    # Reload the best checkpoint with from_pretrained: the Trainer's own best-model reload
    # (transformers 5.x) skips the key renaming of GPTNeoX checkpoints (lm_head is saved as
    # embed_out) and would leave the last epoch's output layer in the baseline. It is the
    # whole model in every process: ZeRO-3 gathers it into model.safetensors on saving, and
    # with the DeepSpeed config unset from_pretrained no longer partitions what it loads.
    unset_hf_deepspeed_config()
    model = type(trainer.model).from_pretrained(trainer.state.best_model_checkpoint).to(device)
    reset_memory(model)
    distributed.barrier()  # all have read the checkpoint before the main process removes it
    if distributed.is_main():
        model.save_pretrained(run_dir)
        data.tokenizer.save_pretrained(run_dir)
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    distributed.barrier()
    return model, elapsed


def per_process_batch(batch_size: int) -> int:
    """Each data-parallel process's share of the global batch (ValueError if it does not divide)."""
    world = distributed.launched_world_size()
    if batch_size % world:
        raise ValueError(f"training.batch_size: {batch_size} (the global batch) does not divide among {world} "
                         f"processes; accepted: a multiple of {world}")
    return batch_size // world


def eval_batch_size(model, training: TrainConfig, evaluation: EvalConfig) -> int:
    """Each process's evaluation batch. In stream scope it is the training batch: the memory is
    shared by the batch rows and averaged over them, so a model is scored reading its stream as
    it was trained to; otherwise the evaluation section's."""
    if getattr(model.config, "memory_scope", None) == "stream":
        return per_process_batch(training.batch_size)
    return evaluation.batch_size


def windowed(data, width: int):
    """`data` with every sample longer than `width` cut into windows of `width` tokens (the rest
    dropped): how a model with a context limit (the Pythia baseline) trains on long samples."""
    if len(data.train[0]["input_ids"]) <= width:
        return data

    def cut(batch):
        out = {"input_ids": [], "recall": []}
        for ids, recall in zip(batch["input_ids"], batch["recall"]):
            for start in range(0, len(ids) - width + 1, width):
                out["input_ids"].append(ids[start:start + width])
                out["recall"].append(recall[start:start + width])
        return out

    splits = {split: getattr(data, split) for split in ("train", "validation", "test")}
    return dataclasses.replace(data, **{split: samples.map(cut, batched=True, remove_columns=samples.column_names)
                                        for split, samples in splits.items()})


def train_curriculum(model, stages, run_dir: Path, config: TrainConfig, eval_config: EvalConfig,
                     device: torch.device, resume: bool = False, callbacks=(), shared_first_stage: Path | None = None):
    """Train through `config.curriculum` in order (stages: a DataBundle per stage), each stage in
    run_dir/stages/<i>-<sample_len> with `train` and starting from the model the previous stage
    kept. With `resume`, finished stages (model saved, trainer folder gone) are loaded, not
    retrained. `shared_first_stage`: the finished folder of a first stage trained once for the
    suite (`train_shared_first_stage`), whose weights replace this model's first stage.
    run_dir/metrics.jsonl gets every stage's epochs, numbered on across stages.
    Returns the last stage's model and the training time of all stages."""
    if not resume and distributed.is_main():
        shutil.rmtree(run_dir / "stages", ignore_errors=True)
    distributed.barrier()
    records, total_time = [], 0.0
    for i, (stage, data) in enumerate(zip(config.curriculum, stages), 1):
        shared = i == 1 and shared_first_stage is not None
        stage_dir = shared_first_stage if shared else run_dir / "stages" / f"{i}-{stage['sample_len']}"
        done = stage_dir / "stage.json"
        if shared:
            kept = load_matching_weights(model, stage_dir)
            print(f"first stage: the shared one ({stage_dir}); own initialisation kept for "
                  f"{', '.join(kept) if kept else 'no parameter'}", flush=True)
        elif done.exists():
            model = type(model).from_pretrained(stage_dir).to(device)
        else:
            model, elapsed = train(model, data, stage_dir, config.for_stage(stage), eval_config, device, resume=resume,
                                   callbacks=callbacks)
            if distributed.is_main():
                atomic_write_json(done, {"train_time_s": elapsed, **stage})
            distributed.barrier()
        total_time += json.loads(done.read_text())["train_time_s"]
        offset = records[-1]["epoch"] if records else 0
        for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            records.append({**m, "epoch": m["epoch"] + offset, "stage": i, "sample_len": stage["sample_len"]})
    if distributed.is_main():
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        model.save_pretrained(run_dir)
        stages[-1].tokenizer.save_pretrained(run_dir)
    distributed.barrier()
    return model, total_time


def load_matching_weights(model, folder: Path) -> list[str]:
    """Copy into `model` the weights saved in `folder` (safetensors) that have a parameter of the
    same name and shape; returns the names of the model's own that were left as they were (a
    memory rule's or a memory type's parameters that the saved model did not have)."""
    saved = load_file(folder / "model.safetensors")
    own = model.state_dict()
    matching = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))
