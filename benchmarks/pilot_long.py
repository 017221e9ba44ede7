"""Pilot of the long suite's CPU profile: does a memory model learn to retrieve, and how far?

Trains one model of the long suite on the profile's own curriculum stages and data with a plain
AdamW loop (lr, batch and clipping of the profile; a fresh optimiser each stage, as the suite's
Trainer has), scoring single-NIAH documents of the suite's evaluation grid as it goes, then scores
the retrieval cells and the memory probes asked for. Minutes instead of the suite's hours, so a
protocol change can be tried before the suite is re-run; the README's "State of the long suite"
quotes its output. Example (the table's `infini` row; about 25 minutes on 2 cores):

    python benchmarks/pilot_long.py --plan 0:4800,1:1500,2:500 --score-lengths 4096,16384,65536

`--save`/`--load` keep a checkpoint (state dict) so that a later pilot can start from a stage.
"""

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from infini_bench.data.needles import LOCAL, SentencePool, needle_documents
from infini_bench.evaluation import retrieval_cell
from infini_bench.models import build_model
from infini_bench.pipeline import model_vocab_size, prepare_suite_data
from infini_bench.probes import probe_memory
from infini_bench.suites import load_run_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="single-memory", help="a model of the long suite (its slug)")
    p.add_argument("--rule", default=None, help="memory_rule to override the suite's")
    p.add_argument("--plan", default="0:4800,1:1500,2:500", help="stage:steps,... in order")
    p.add_argument("--every", type=int, default=500, help="score the 1K cells every this many steps")
    p.add_argument("--load", default="", help="start from this state dict")
    p.add_argument("--save", default="", help="save the state dict here at the end")
    p.add_argument("--score-lengths", default="", help="lengths of the final retrieval cells")
    p.add_argument("--families", default="single,multikey")
    p.add_argument("--haystacks", default="filler,heldout")
    p.add_argument("--depths", default="0,50,local")
    p.add_argument("--probe-lengths", default="1024,4096,16384,65536")
    p.add_argument("--docs", type=int, default=20, help="documents a retrieval cell")
    p.add_argument("--seed", type=int, default=0, help="initialisation and sample order of the loop")
    return p.parse_args()


def score(model, tokenizer, pools, seed, gap, family, haystack, length, depth, docs):
    rows = needle_documents(tokenizer, family, haystack, length, [depth], docs, seed, gap, with_ids=True,
                            pool=pools[haystack])
    cell = retrieval_cell(model, tokenizer, rows, 16, torch.device("cpu"))
    return sum(cell["correct"]), len(rows), round(float(np.mean(cell["answer_logprob"])), 2)


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    config = load_run_config("long", "cpu", only_models=[args.model])
    data, stages = prepare_suite_data(config)
    tokenizer, seed, evaluation = data.tokenizer, config.data.seed, config.evaluation
    model_config = config.model_config(config.models[0], vocab_size=model_vocab_size(tokenizer))
    if args.rule:
        model_config.memory_rule = args.rule
    model = build_model(model_config)
    if args.load:  # strict=False: a rule's own parameters (delta_l2's write strength) start fresh
        print("loaded:", model.load_state_dict(torch.load(args.load), strict=False), flush=True)
    train_config = config.training
    # The haystacks scored at the end, and the filler that the running 1K score reads.
    pools = {h: SentencePool.build(tokenizer, seed, "evaluation", h) for h in {*args.haystacks.split(","), "filler"}}

    def report(label):
        model.eval()
        cells = {d: score(model, tokenizer, pools, seed, evaluation.needle_gap, "single", "filler", 1024,
                          LOCAL if d == "local" else int(d), args.docs) for d in ["local", "0"]}
        print(f"{label}: 1K single filler {cells}", flush=True)
        model.train()

    rng = np.random.default_rng(args.seed)
    model.train()
    for part in filter(None, args.plan.split(",")):
        index, steps = map(int, part.split(":"))
        train = stages[index].train
        print(f"stage {index}: {len(train)} samples of {len(train[0]['input_ids'])} tokens, {steps} steps",
              flush=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
        step, losses, start = 0, [], time.time()
        while step < steps:
            order = rng.permutation(len(train))
            for i in range(0, len(order) - train_config.batch_size + 1, train_config.batch_size):
                if step == steps:
                    break
                ids = torch.tensor(train[order[i:i + train_config.batch_size].tolist()]["input_ids"])
                loss = model(ids, labels=ids).loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.max_grad_norm)
                optimizer.step()
                losses.append(loss.item())
                step += 1
                if step % 200 == 0:
                    print(f"  step {step} loss {np.mean(losses[-200:]):.3f} ({time.time() - start:.0f} s)", flush=True)
                if step % args.every == 0:
                    report(f"stage {index} step {step}")
        report(f"end of stage {index}")
    if args.save:
        torch.save(model.state_dict(), args.save)
    model.eval()
    for haystack in args.haystacks.split(","):
        for family in args.families.split(","):
            for length in map(int, filter(None, args.score_lengths.split(","))):
                for depth in args.depths.split(","):
                    cell = score(model, tokenizer, pools, seed, evaluation.needle_gap, family, haystack, length,
                                 LOCAL if depth == "local" else int(depth), args.docs)
                    print(f"{haystack} {family} {length} depth {depth}: {cell[0]}/{cell[1]} "
                          f"(mean answer log-prob {cell[2]})", flush=True)
    if model_config.memory_type != "none" and args.probe_lengths:
        probes = probe_memory(model, tokenizer, dataclasses.replace(
            evaluation, probe_lengths=[int(x) for x in args.probe_lengths.split(",")], probe_docs=4),
            "cpu", None, seed)
        for length, layers in probes["lengths"].items():
            for layer, values in layers.items():
                means = {k: np.round(np.mean(v, axis=0), 4).tolist() for k, v in values.items()}
                print(f"probes {length} layer {layer}: {json.dumps(means)}", flush=True)


if __name__ == "__main__":
    main()
