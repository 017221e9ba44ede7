"""Rolling log-likelihood of long documents through the memory: peak memory and speed by length.

For each memory rule (`--rules`, all by default), a pythia-14m-dims Infini model (single
memory, a 4,096-token BPE vocabulary, random weights) scores one document of each length (4K,
64K, 1M tokens) with lm-eval's `loglikelihood_rolling` request through the `infini_pythia`
model: every token's prediction, the whole document through the memory. Each length runs in a
fresh process so that its peak RSS is its own; its time is the best of REPEATS runs after a
warm-up (one run at 1M, which takes minutes). Last line, a pair per rule:
    RESULT rss_1m_vs_4k_<rule>=<x> tps_1m_vs_4k_<rule>=<y> ...
Targets: rss <= 1.2, tps >= 0.9 for every rule (memory flat and speed constant as the input
grows).
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infini_bench.models.configuration_infini_pythia import MEMORY_RULES

LENGTHS = {"4k": 4096, "64k": 65536, "1m": 1048576}
REPEATS = {"4k": 3, "64k": 3, "1m": 1}  # each length's time is the best of this many runs


def make_checkpoint(folder: Path, segment_len: int, rule: str):
    import torch

    from infini_bench import InfiniPythiaConfig, build_model
    from infini_bench.data.embedded import embedded_documents
    from infini_bench.data.tokenizer import train_bpe_tokenizer

    texts = [d["text"] for d in embedded_documents(200, seed=0)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=4096)
    torch.manual_seed(0)
    config = InfiniPythiaConfig.from_preset("pythia-14m", memory_type="single", segment_len=segment_len,
                                            memory_rule=rule)
    build_model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def worker(checkpoint: str, length: int, repeats: int):
    """Score one document of `length` tokens; print peak RSS and tokens/s as JSON."""
    import torch
    from lm_eval.api.instance import Instance

    from infini_bench.data.embedded import make_document
    from infini_bench.lm_eval_model import InfiniPythiaLM

    lm = InfiniPythiaLM(pretrained=checkpoint, device="cpu")
    # The document as text, as lm-eval hands it over: whole embedded documents until it holds
    # `length` tokens, then cut to `length` - 1 tokens (the EOS prefix makes `length`).
    rng, parts, count = random.Random(1), [], 0
    while count < length:
        parts.append(" " + make_document(rng)[0])
        count += len(lm.tok_encode(parts[-1]))
    text = "".join(parts)
    text = lm.tok_decode(lm.tok_encode(text)[:length - 1])
    n_tokens = len(lm.tok_encode(text)) + 1

    def request(s):
        return Instance(request_type="loglikelihood_rolling", doc={}, arguments=(s,), idx=0)

    warm_up = lm.tok_decode(lm.tok_encode(text[:40_000])[:4095])
    lm.loglikelihood_rolling([request(warm_up)], disable_tqdm=True)
    times = []
    for _ in range(repeats):
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
    parser.add_argument("--rules", nargs="+", default=list(MEMORY_RULES), choices=MEMORY_RULES)
    parser.add_argument("--worker", nargs=3, metavar=("CHECKPOINT", "LENGTH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    print(f"pythia-14m dims, single memory, segment {args.segment_len}, CPU, rolling log-likelihood")
    print(f"{'rule':<12}{'length':<8}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'peak RSS MiB':>14}")
    ratios = []
    for rule in args.rules:
        stats = {}
        with tempfile.TemporaryDirectory() as folder:
            make_checkpoint(Path(folder), args.segment_len, rule)
            for name, length in LENGTHS.items():
                out = subprocess.run([sys.executable, __file__, "--worker", folder, str(length), str(REPEATS[name])],
                                     check=True, capture_output=True, text=True)
                stats[name] = json.loads(out.stdout.strip().splitlines()[-1])
        for name, s in stats.items():
            print(f"{rule:<12}{name:<8}{s['tokens']:>8}{s['seconds']:>10.2f}{s['tps']:>10.0f}"
                  f"{s['peak_rss_mib']:>14.0f}", flush=True)
        long, short = stats["1m"], stats["4k"]
        ratios.append(f"rss_1m_vs_4k_{rule}={long['peak_rss_mib'] / short['peak_rss_mib']:.3f} "
                      f"tps_1m_vs_4k_{rule}={long['tps'] / short['tps']:.3f}")
    print("RESULT " + " ".join(ratios))


if __name__ == "__main__":
    main()
