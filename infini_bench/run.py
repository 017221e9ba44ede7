"""`python -m infini_bench.run --suite core`: train and evaluate a suite's models, write the leaderboard.

Parses the command line, resolves the suite and hands it to `infini_bench.pipeline`;
`--suite sweep` hands over to the Ray Tune sweep (configs/sweeps/default.yaml).
"""

import argparse
import sys

from .cli import ArgumentParser


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m infini_bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", required=True, help="suite name (configs/suites/<name>.yaml) or a YAML path; "
                                                       "'sweep' runs the Ray Tune sweep configs/sweeps/default.yaml")
    parser.add_argument("--preset", help="model dims: pythia-14m, pythia-70m, pythia-160m, pythia-410m")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data", help="embedded, pile, pg19, pile:<local mirror>, or a local file/folder")
    parser.add_argument("--output-dir", default=".", help="runs/ and leaderboard/ are written here")
    parser.add_argument("--seed", type=int, help="data and training seed (default: the suite's)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train and evaluate every model with this many seeds (seed, seed + 1, ...)")
    parser.add_argument("--max-epochs", type=int, help="override the suite's training.max_epochs")
    parser.add_argument("--deepspeed", help="DeepSpeed config passed to the Trainer: zero1, zero2, zero3, "
                                            "zero3_offload (configs/deepspeed/) or a .json path")
    parser.add_argument("--models", help="only these models, by run-directory name (comma-separated)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="no training: reload each finished model's saved weights, recompute its validation "
                             "metrics and compare them with its results.json (exit 1 on a difference)")
    # Set by the `deepspeed` launcher; the rank is read from LOCAL_RANK / RANK as under torchrun.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # deferred: these import torch, transformers, datasets, matplotlib and Ray's wrappers
    # (seconds); `--help` and a bad flag answer at once without them.
    if args.suite == "sweep":
        from . import sweep

        return sweep.main(["--config", "default", "--output-dir", args.output_dir])
    from .device import pick_device
    from .suites import load_run_config

    try:
        device = pick_device(args.device)
        config = load_run_config(args.suite, device.type, preset=args.preset, data=args.data,
                                 output_dir=args.output_dir, seed=args.seed, deepspeed=args.deepspeed,
                                 max_epochs=args.max_epochs,
                                 only_models=args.models.split(",") if args.models else None,
                                 num_seeds=args.seeds)
        from . import pipeline  # after the config: a bad suite is reported before the Trainer loads

        pipeline.preflight(config, reevaluate=args.reevaluate)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return pipeline.run_job(config, device, reevaluate_only=args.reevaluate)


if __name__ == "__main__":
    sys.exit(main())
