"""Which device a run uses, and its precision: CUDA when present (bf16 autocast where the GPU
supports it), the CPU in full precision otherwise. Tests never assume CUDA."""

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available; accepted here: auto, cpu")
    return torch.device(requested)


def autocast_dtype(device: torch.device):
    """bf16 on CUDA where supported, full precision elsewhere."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
