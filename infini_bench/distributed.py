"""Data parallelism: which process this is, waiting for the others, and evaluation shared by them.

Launched by `deepspeed`, `torchrun` or `srun` + one of them, every process runs the same entry
point; `init` starts the process group from the launcher's environment (accelerate's
`PartialState`, the one the Trainer then reuses). Without a launcher every helper here is the
single-process no-op, so the same code runs in both cases. Only the main process writes run
directories and leaderboards; all processes train and share the validation evaluation.
"""

import os
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from accelerate import PartialState

# Ranks wait for the main process while it alone runs the evaluations that are not shared
# (reversal, pass-key grid, long-document PPL): minutes at reference scale, hence a long timeout.
TIMEOUT = timedelta(hours=2)


def launched_world_size() -> int:
    """Processes the launcher started (WORLD_SIZE), known before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device):
    """Join the launcher's process group (no-op for a single process or when already joined)."""
    if launched_world_size() > 1 and not dist.is_initialized():
        PartialState(cpu=device.type == "cpu", timeout=TIMEOUT)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier():
    if active():
        dist.barrier()


@contextmanager
def main_first():
    """The main process runs the block first (it writes caches), the others after it (they read them)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _bounds(n: int) -> list[int]:
    """Where each process's contiguous share of n items starts (shares differ by at most one)."""
    return [n * r // world_size() for r in range(world_size() + 1)]


def share(n: int) -> tuple[range, int]:
    """This process's share of n items, and the size of the largest share."""
    bounds = _bounds(n)
    return range(bounds[rank()], bounds[rank() + 1]), -(-n // world_size())


def gather_rows(rows: np.ndarray, n: int, device: torch.device) -> np.ndarray:
    """The processes' `rows` ([len(share(n)[0]), ...] each) put back in order: [n, ...], every
    row exactly once. Tensors travel on the device the backend needs (NCCL: the GPU)."""
    if not active():
        return rows
    bounds, (_, largest) = _bounds(n), share(n)
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((largest, *rows.shape[1:]), dtype=torch.float64, device=on)
    padded[:len(rows)] = torch.as_tensor(rows, dtype=torch.float64)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return np.concatenate([part[:bounds[r + 1] - bounds[r]].cpu().numpy() for r, part in enumerate(parts)])
