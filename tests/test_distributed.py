"""Data parallelism on CPU (gloo): evaluation shared by processes counts every sample once; each
process keeps its own stream memory; DeepSpeed ZeRO-2 training with 2 processes matches 1 process."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from helpers import REPO, launcher_env, tiny_model
from infini_bench.evaluation import sample_token_nll
from infini_bench.run import main

VOCAB, LENGTH = 101, 24
CPU = torch.device("cpu")


def tiny(memory_type: str, scope: str = "sequence"):
    return tiny_model(memory_type, vocab=VOCAB, memory_scope=scope)


MODELS = {"baseline": ("none", "sequence"), "sequence": ("single", "sequence"), "stream": ("single", "stream")}


def samples(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, VOCAB, size=(n, LENGTH))


def spawn(target, world: int, tmp_path: Path, *args):
    """Run target(rank, *args) in `world` processes joined by a gloo process group."""
    mp.spawn(_entry, args=(world, str(tmp_path / "rendezvous"), target, args), nprocs=world, join=True)


def _entry(rank, world, rendezvous, target, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        target(rank, *args)
    finally:
        dist.destroy_process_group()


def _score(rank, out: str, n: int, batch_size: int):
    for name, (memory_type, scope) in MODELS.items():
        nll = sample_token_nll(tiny(memory_type, scope).eval(), samples(n), batch_size, CPU)
        np.save(f"{out}/{name}-rank{rank}.npy", nll)


@pytest.mark.parametrize("world,n,batch_size", [(2, 13, 4), (3, 2, 4)])
def test_shared_evaluation_counts_every_sample_once(tmp_path, world, n, batch_size):
    """13 samples, batches of 4 on 2 processes (shares 6 and 7: uneven last batches), and 2
    samples on 3 processes (one process has none): every process gets all n rows, in order."""
    spawn(_score, world, tmp_path, str(tmp_path), n, batch_size)
    ids = samples(n)
    bounds = [n * r // world for r in range(world + 1)]
    for name, (memory_type, scope) in MODELS.items():
        gathered = [np.load(tmp_path / f"{name}-rank{r}.npy") for r in range(world)]
        for other in gathered[1:]:
            np.testing.assert_array_equal(other, gathered[0])
        assert gathered[0].shape == (n, LENGTH - 1)
        model = tiny(memory_type, scope).eval()
        if scope == "sequence":  # rows are independent: the same as one process scoring all
            expected = sample_token_nll(model, ids, batch_size, CPU)
        else:  # each process streams its share through its own memory, from empty
            expected = np.concatenate([sample_token_nll(model, ids[bounds[r]:bounds[r + 1]], batch_size, CPU)
                                       for r in range(world)])
        np.testing.assert_allclose(gathered[0], expected, rtol=1e-5, atol=1e-6)


def _train_steps(rank, out: str):
    model = tiny("single", "stream").train()
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/weights-0.safetensors")
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(100 + rank)
    tensors = {}
    for step in (1, 2):
        batch = torch.randint(0, VOCAB, (3, 16), generator=generator)
        tensors[f"batch-{step}"] = batch
        ddp(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1 and rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/weights-1.safetensors")
    (state,) = model._stream_state
    save_file({**tensors, "memory": state.memory, "norm": state.norm}, f"{out}/rank{rank}.safetensors")


def test_stream_memory_is_per_process_under_ddp(tmp_path):
    """Two DDP training steps on different batches: gradients are averaged, but each process's
    stream memory is what its own batches wrote (through the shared weights), not synchronised."""
    spawn(_train_steps, 2, tmp_path, str(tmp_path))
    saved = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert not torch.allclose(saved[0]["memory"], saved[1]["memory"])
    for r in range(2):
        model = tiny("single", "stream")
        with torch.no_grad():
            model.load_state_dict(load_file(tmp_path / "weights-0.safetensors"))
            model(saved[r]["batch-1"])
            model.load_state_dict(load_file(tmp_path / "weights-1.safetensors"))
            model(saved[r]["batch-2"])
        (state,) = model._stream_state
        torch.testing.assert_close(state.memory, saved[r]["memory"])
        torch.testing.assert_close(state.norm, saved[r]["norm"])


def launch(script: str, *args, cache: Path, **env) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", script, *args], cwd=REPO, env=launcher_env(cache, **env), capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def zero2(smoke, tmp_path_factory):
    """launch/deepspeed_cpu_smoke.sh, run once: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("zero2")
    return out, launch("launch/deepspeed_cpu_smoke.sh", str(out), cache=smoke[0] / "cache")


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_match_one(smoke, zero2):
    """launch/deepspeed_cpu_smoke.sh: 2 processes, ZeRO-2, global batch 8 (4 each). The loss
    falls, the saved model re-evaluates to the recorded metrics, and the validation PPL is
    within 2% of the 1-process smoke run (global batch 8) of the same model."""
    out, _ = smoke
    tmp_path, result = zero2
    assert "DeepSpeed ZeRO stage 2 (zero2.json) on 2 process(es), 4 samples each per step" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"RESULT loss_first=(\S+) loss_last=(\S+) eval_match=(true|false)", last)
    assert match, last
    assert float(match[2]) < float(match[1]) - 0.5
    assert match[3] == "true"
    two = json.loads((tmp_path / "runs/smoke/single-memory/results.json").read_text())
    one = json.loads((out / "runs/smoke/single-memory/results.json").read_text())
    run_config = json.loads((tmp_path / "runs/smoke/single-memory/run_config.json").read_text())
    assert run_config["data_parallel_processes"] == 2 and run_config["run"]["training"]["batch_size"] == 8
    assert two["best_val_ppl"] == pytest.approx(one["best_val_ppl"], rel=0.02)
    assert two["epochs_trained"] == one["epochs_trained"]


@pytest.mark.slow
def test_deepspeed_run_killed_then_resumed_equals_uninterrupted(smoke, zero2, tmp_path):
    """The smoke script's training (2 processes, ZeRO-2) killed (every process, SIGKILL) once its
    epoch-1 checkpoint (DeepSpeed's optimizer shards included) is complete; the same launch resumes
    from it and ends where the uninterrupted run did (the reevaluation is zero2's)."""
    cache, (reference, _) = smoke[0] / "cache", zero2
    def command(env):  # a fresh port each launch: the killed one's may still be held
        return ["deepspeed", "--num_accelerators", "2", "--master_port", env["MASTER_PORT"], "--module",
                "infini_bench.run", "--suite", "smoke", "--models", "single-memory", "--deepspeed", "zero2",
                "--output-dir", str(tmp_path)], env

    trainer = tmp_path / "runs/smoke/single-memory/trainer"
    args, env = command(launcher_env(cache))
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(trainer.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "runs/smoke/single-memory/results.json").exists()
    args, env = command(launcher_env(cache))
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"resuming from .*/trainer/checkpoint-\d+ \(epoch 1\)", result.stdout)
    ours = json.loads((tmp_path / "runs/smoke/single-memory/results.json").read_text())
    theirs = json.loads((reference / "runs/smoke/single-memory/results.json").read_text())
    for key in ("best_val_ppl", "best_epoch", "epochs_trained"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key
    assert [c["val_ppl"] for c in ours["curve"]] == pytest.approx([c["val_ppl"] for c in theirs["curve"]], rel=1e-6)


def test_global_batch_that_does_not_divide_among_the_processes(tmp_path, monkeypatch, capsys):
    """Under a launcher of 3 processes the smoke suite's global batch of 8 is refused up front."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["--suite", "smoke", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: training.batch_size: 8 (the global batch) does not divide among 3 processes; "
                   "accepted: a multiple of 3")
    assert not (tmp_path / "out").exists()


TORCHRUN_ARGS = ("smoke", "--models", "single-memory")


@pytest.fixture(scope="module")
def torchrun_one_node(smoke, tmp_path_factory):
    """launch/torchrun.sh on one node with 2 processes, run once: its output folder."""
    out = tmp_path_factory.mktemp("torchrun")
    launch("launch/torchrun.sh", *TORCHRUN_ARGS, "--output-dir", str(out), cache=smoke[0] / "cache", NPROC="2")
    return out


@pytest.mark.slow
def test_torchrun_two_processes_match_one(smoke, torchrun_one_node):
    """launch/torchrun.sh (DDP, no DeepSpeed), 2 processes: the same entry point and results
    format, validation PPL within 2% of the 1-process run, the saved model re-evaluates equal."""
    out, _ = smoke
    two = json.loads((torchrun_one_node / "runs/smoke/single-memory/results.json").read_text())
    one = json.loads((out / "runs/smoke/single-memory/results.json").read_text())
    assert json.loads((torchrun_one_node / "runs/smoke/single-memory/environment.json").read_text())[
        "data_parallel_processes"] == 2
    assert two["best_val_ppl"] == pytest.approx(one["best_val_ppl"], rel=0.02)
    reevaluated = launch("launch/torchrun.sh", *TORCHRUN_ARGS, "--output-dir", str(torchrun_one_node),
                         "--reevaluate", cache=out / "cache", NPROC="2")
    assert "Single Memory: test PPL" in reevaluated.stdout and "PPLs: match" in reevaluated.stdout


@pytest.mark.slow
def test_torchrun_two_nodes_match_one_node(smoke, torchrun_one_node, tmp_path):
    """The multi-node path of launch/torchrun.sh on one machine: two node processes (NNODES=2,
    node ranks 0 and 1, one process each, c10d rendezvous on localhost) form one group of 2 and
    train exactly what one node with 2 processes trains."""
    cache = smoke[0] / "cache"
    env = launcher_env(cache, NNODES="2", NPROC="1", MASTER_ADDR="127.0.0.1")
    logs = [tmp_path / f"node-{rank}.log" for rank in (0, 1)]  # files: a full pipe cannot stall a node
    nodes = []
    for rank, log in enumerate(logs):
        with log.open("w") as output:
            nodes.append(subprocess.Popen(["bash", "launch/torchrun.sh", *TORCHRUN_ARGS, "--output-dir",
                                           str(tmp_path)], cwd=REPO, env={**env, "NODE_RANK": str(rank)},
                                          stdout=output, stderr=subprocess.STDOUT))
    codes = [node.wait(timeout=900) for node in nodes]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    run = tmp_path / "runs/smoke/single-memory"
    assert json.loads((run / "environment.json").read_text())["data_parallel_processes"] == 2
    two_nodes = json.loads((run / "results.json").read_text())
    one_node = json.loads((torchrun_one_node / "runs/smoke/single-memory/results.json").read_text())
    assert two_nodes["best_val_ppl"] == pytest.approx(one_node["best_val_ppl"], rel=1e-6)
    assert [c["val_ppl"] for c in two_nodes["curve"]] == pytest.approx([c["val_ppl"] for c in one_node["curve"]],
                                                                       rel=1e-6)
    one_process = json.loads((smoke[0] / "runs/smoke/single-memory/results.json").read_text())
    assert two_nodes["best_val_ppl"] == pytest.approx(one_process["best_val_ppl"], rel=0.02)
