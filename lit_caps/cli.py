"""``lit-caps``: thin entry points over the library.

    lit-caps fit --model capsnet --data mnist [--arch mnist] [--train default] [--seed 0] [key.sub=value ...]
    lit-caps bench [--models ...] [--archs ...]
    lit-caps report clean-error [--runs runs] [--out reports]
"""
from __future__ import annotations

import argparse
import sys


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="capsnet", help="capsnet | cnn_cr | cnn_r | capsnet_all | capsnet_winner")
    p.add_argument("--data", default="mnist", help="mnist | fashion_mnist | svhn | cifar10 | mnist_c")
    p.add_argument("--arch", default=None, help="architecture config (default: the dataset's; or a YAML path)")
    p.add_argument("--train", default="default", help="training profile: default | smoke | a YAML path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="a full experiment YAML (e.g. a run's config.yaml)")
    p.add_argument("--runs", default="runs", help="root folder of run directories")
    p.add_argument("--run-dir", default=None, help="explicit run directory (default: derived from the config)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_epochs=5 data.root=/data")


def cmd_fit(args) -> int:
    from .config import compose
    from .train import fit

    cfg = compose(args.model, args.data, args.arch, args.train, args.seed, args.overrides, args.config)
    summary = fit(cfg, runs_root=args.runs, run_dir=args.run_dir)
    print(f"[lit-caps] {summary['dataset']}/{summary['model']}: test error {summary['test_error'] * 100:.2f}% "
          f"after {summary['epochs']} epochs, threshold {summary['threshold']:.4f} ({summary['run_dir']})")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_report(args) -> int:
    from . import reports

    if args.what == "clean-error":
        reports.clean_error_report(args.runs, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lit-caps", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="train (or resume, or reuse) one model, then test it")
    _add_experiment_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("bench", help="training/forward throughput of each model and config (images/s)")
    p.add_argument("--models", nargs="+", default=["capsnet", "cnn_cr", "cnn_r"])
    p.add_argument("--archs", nargs="+", default=["mnist", "sabour", "svhn", "cifar10"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after 2 warm-up steps)")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, + cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--attack-steps", type=int, default=10, help="iterations per timed attack call")
    p.add_argument("--no-attacks", action="store_true", help="skip the attack throughput table")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write a report under reports/ from finished runs")
    p.add_argument("what", choices=["clean-error"])
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="reports")
    p.set_defaults(func=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
