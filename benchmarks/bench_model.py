"""Training speed (forward + backward) of the Infini variants against GPT-NeoX, same run.

Pythia-70m dims, batch 8, sequence 256, the reference's stream protocol (one 256-token
segment per sample). Models are timed in interleaved rounds so that machine drift hits all of
them alike; each model's figure is its median step time. Last line:
    RESULT single_vs_gptneox=<x> multi16_vs_single=<y>
Targets: single_vs_gptneox >= 0.95, multi16_vs_single >= 0.90.
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
    "multi16": dict(memory_type="multi", num_memories=16),
    "hierarchical4": dict(memory_type="hierarchical", num_memories=4),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-70m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {}
    for name, overrides in VARIANTS.items():
        config = InfiniPythiaConfig.from_preset(args.preset, memory_scope="stream", segment_len=args.seq, **overrides)
        models[name] = build_model(config).to(device).train()
    batch = torch.randint(0, models["gptneox"].config.vocab_size, (args.batch, args.seq), device=device)

    def step(model):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for model in models.values():  # warm-up
        step(model)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(step(model))

    tokens = args.batch * args.seq
    tps = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(f"{args.preset} dims, batch {args.batch} x {args.seq}, {device}, {args.rounds} rounds "
          f"(forward + backward, median)")
    print(f"{'model':<15}{'tokens/s':>10}{'vs gptneox':>12}")
    for name, value in tps.items():
        print(f"{name:<15}{value:>10.0f}{value / tps['gptneox']:>12.3f}")
    print(f"RESULT single_vs_gptneox={tps['single'] / tps['gptneox']:.3f} "
          f"multi16_vs_single={tps['multi16'] / tps['single']:.3f}")


if __name__ == "__main__":
    main()
