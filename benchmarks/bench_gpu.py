"""Training throughput and model FLOPs utilisation on one GPU: Infini (single memory, multi(4))
against GPT-NeoX, pythia-70m and pythia-160m dims, bf16 autocast, full AdamW steps.

Each model trains on `--batch` x `--seq` tokens per step (the Infini models in segments of
`--segment`, as the long suite's CUDA profile does); models are timed in interleaved rounds
after a warm-up, each figure being the median step. MFU = model FLOPs per second / the
GPU's peak dense bf16 FLOPs, with model FLOPs per token (the PaLM appendix B estimate):
    6 N + 12 L d C  (+ the memory read and write, 3 x 2 H dh^2 (M + 1) per Infini layer)
N: parameters less the input embedding (a lookup), L layers, d width, C the attention span
(the sequence for GPT-NeoX, the segment for Infini), H heads of width dh, M memories.
Last line: RESULT <preset>_<model>_vs_gptneox=<tokens/s ratio> ... for every preset and model.
On CPU (`--device cpu`, small sizes) it runs as a check of the script, with MFU n/a.
"""

import argparse
import statistics
import time

import torch

from infini_bench import InfiniPythiaConfig, build_model

VARIANTS = {
    "gptneox": dict(memory_type="none"),
    "single": dict(memory_type="single"),
    "multi4": dict(memory_type="multi", num_memories=4),
}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}  # dense, per GPU


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def flops_per_token(model, seq: int) -> float:
    c = model.config
    infini = getattr(c, "memory_type", "none") != "none"
    span = c.segment_len if infini else seq
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    flops = 6 * params + 12 * c.num_hidden_layers * c.hidden_size * span
    if infini:
        head_dim = c.hidden_size // c.num_attention_heads
        flops += len(c.infini_layer_ids()) * 3 * 2 * c.num_attention_heads * head_dim ** 2 * (c.num_memories + 1)
    return flops


def train_step(model, optimizer, batch, device) -> float:
    """One AdamW step (bf16 autocast on CUDA, clipping at 1.0); its wall time in seconds."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        loss = model(batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_preset(preset: str, args, device: torch.device, peak: float | None) -> list[str]:
    """Time the variants at one preset's dims, print a row each; their RESULT entries."""
    torch.manual_seed(0)
    models, optimizers = {}, {}
    for name, overrides in VARIANTS.items():
        config = InfiniPythiaConfig.from_preset(preset, memory_scope="sequence", segment_len=args.segment, **overrides)
        models[name] = build_model(config).to(device).train()
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = torch.randint(0, models["gptneox"].config.vocab_size, (args.batch, args.seq), device=device)
    for name in models:  # warm-up: kernels chosen, optimizer state made
        for _ in range(2):
            train_step(models[name], optimizers[name], batch, device)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(train_step(models[name], optimizers[name], batch, device))
    tps = {name: args.batch * args.seq / statistics.median(t) for name, t in times.items()}
    results = []
    for name, model in models.items():
        achieved = tps[name] * flops_per_token(model, args.seq)
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        params = sum(p.numel() for p in model.parameters())
        print(f"{preset:<13}{name:<10}{params / 1e6:>9.1f}M{tps[name]:>12,.0f}{achieved / 1e12:>9.1f}{mfu:>8}"
              f"{tps[name] / tps['gptneox']:>12.3f}", flush=True)
        if name != "gptneox":
            results.append(f"{preset.replace('pythia-', 'p')}_{name}_vs_gptneox={tps[name] / tps['gptneox']:.3f}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="pythia-70m,pythia-160m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--segment", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOPS (default: from its name)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops(device, args.peak_tflops)
    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"{gpu}: batch {args.batch} x {args.seq} tokens, Infini segments of {args.segment}, "
          f"{'bf16 autocast' if cuda else 'fp32'}, AdamW, {args.rounds} rounds (median step), "
          f"peak {peak / 1e12 if peak else 'n/a'} TFLOPS")
    print(f"{'preset':<13}{'model':<10}{'params':>10}{'tokens/s':>12}{'TFLOPS':>9}{'MFU':>8}{'vs gptneox':>12}")
    results = []
    for preset in args.presets.split(","):
        results += bench_preset(preset, args, device, peak)
        if cuda:
            torch.cuda.empty_cache()
    print("RESULT " + " ".join(results))


if __name__ == "__main__":
    main()
