"""Rolling log-likelihood of long documents through the memory: peak memory and speed by length.

A pythia-14m-dims Infini model (single memory, Pythia's 50,304-token vocabulary, random
weights) scores one document of each length with lm-eval's `loglikelihood_rolling` request
through the `infini_pythia` model. Each length runs in a fresh process so that its peak RSS is
its own; its time is the best of three runs after a warm-up. Last line:
    RESULT rss_64k_vs_4k=<x> tps_64k_vs_4k=<y>
Targets: rss <= 1.2, tps >= 0.9 (memory flat and speed constant as the input grows).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LENGTHS = {"4k": 4096, "64k": 65536}
REPEATS = 3  # each length's time is the best of this many runs


def make_checkpoint(folder: Path, segment_len: int):
    import torch

    from infini_bench import InfiniPythiaConfig, build_model
    from infini_bench.data.embedded import embedded_documents
    from infini_bench.data.tokenizer import train_bpe_tokenizer

    texts = [d["text"] for d in embedded_documents(200, seed=0)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=4096)
    torch.manual_seed(0)
    config = InfiniPythiaConfig.from_preset("pythia-14m", memory_type="single", segment_len=segment_len)
    build_model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def worker(checkpoint: str, length: int):
    """Score one document of `length` tokens; print peak RSS and tokens/s as JSON."""
    import torch
    from lm_eval.api.instance import Instance

    from infini_bench.data.embedded import embedded_documents
    from infini_bench.lm_eval_model import InfiniPythiaLM

    lm = InfiniPythiaLM(pretrained=checkpoint, device="cpu")
    tokens = []
    for doc in embedded_documents(10_000, seed=1):
        tokens += lm.tok_encode(" " + doc["text"])
        if len(tokens) >= length:
            break
    text = lm.tok_decode(tokens[:length - 1])  # the EOS prefix makes `length` tokens
    n_tokens = len(lm.tok_encode(text)) + 1

    def request(s):
        return Instance(request_type="loglikelihood_rolling", doc={}, arguments=(s,), idx=0)

    lm.loglikelihood_rolling([request(lm.tok_decode(tokens[:4096]))], disable_tqdm=True)  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        (logprob,) = lm.loglikelihood_rolling([request(text)], disable_tqdm=True)
        times.append(time.perf_counter() - start)
    elapsed = min(times)
    assert logprob < 0 and torch.isfinite(torch.tensor(logprob))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": n_tokens, "seconds": elapsed, "tps": n_tokens / elapsed, "peak_rss_mib": peak_mib}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segment-len", type=int, default=256)
    parser.add_argument("--worker", nargs=2, metavar=("CHECKPOINT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    stats = {}
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(Path(folder), args.segment_len)
        for name, length in LENGTHS.items():
            out = subprocess.run([sys.executable, __file__, "--worker", folder, str(length)], check=True,
                                 capture_output=True, text=True)
            stats[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"pythia-14m dims, single memory, segment {args.segment_len}, CPU, rolling log-likelihood")
    print(f"{'length':<8}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'peak RSS MiB':>14}")
    for name, s in stats.items():
        print(f"{name:<8}{s['tokens']:>8}{s['seconds']:>10.2f}{s['tps']:>10.0f}{s['peak_rss_mib']:>14.0f}")
    long, short = stats["64k"], stats["4k"]
    print(f"RESULT rss_64k_vs_4k={long['peak_rss_mib'] / short['peak_rss_mib']:.3f} "
          f"tps_64k_vs_4k={long['tps'] / short['tps']:.3f}")


if __name__ == "__main__":
    main()
