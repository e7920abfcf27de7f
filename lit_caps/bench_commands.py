"""``lit-caps bench``, ``fastpath-check``, ``training-check``: the speed measurements and the checks
that a faster path measures the same (:mod:`lit_caps.bench`, :mod:`lit_caps.fastpath`,
:mod:`lit_caps.training_check`). Each command imports its module when it runs, so ``--help`` stays
free of torch."""
from __future__ import annotations


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_training_check(args) -> int:
    from .validate import check_positive_int, check_writable

    check_positive_int("--epochs", args.epochs)
    check_writable(args.reports, "--reports")
    from .training_check import cmd_training_check as run

    return run(args)


def cmd_fastpath(args) -> int:
    from .validate import check_model, check_positive_int, check_writable

    for m in args.models:
        check_model(m)
    check_positive_int("--n", args.n)
    check_positive_int("--steps", args.steps)
    for flag, path in (("--out", args.out), ("--reports", args.reports)):
        check_writable(path, flag)
    import torch

    from .fastpath import fastpath_check, paper_cell

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.paper_cell:
        if args.data != "mnist":
            from .errors import InvalidArgumentError
            raise InvalidArgumentError(f"--paper-cell is the MNIST CapsNet's Table 3 cell; drop --data {args.data}")
        paper_cell(steps=args.steps, runs_root=args.runs, out_dir=args.out, report_dir=args.reports,
                   data_root=args.data_root, only_report=args.only_report)
        return 0
    fastpath_check(tuple(args.models), args.data, n=args.n, steps=args.steps, runs_root=args.runs, out_dir=args.out,
                   report_dir=args.reports, only_report=args.only_report, data_root=args.data_root,
                   compile=args.compile)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="training/forward throughput of each model and config (images/s)")
    p.add_argument("--models", nargs="+", default=["capsnet", "cnn_cr", "cnn_r"])
    p.add_argument("--archs", nargs="+", default=["mnist", "mnist_wide", "sabour", "svhn", "cifar10"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after 2 warm-up steps)")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, + cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--attack-steps", type=int, default=10, help="iterations per timed attack call")
    p.add_argument("--no-attacks", action="store_true", help="skip the attack throughput table")
    p.add_argument("--compile", action="store_true",
                   help="add PGD and R-PGD through torch.compile'd forwards (as the paper-scale runs use them; "
                        "compile time is excluded, ~1 min per model)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="attack precisions to time (bf16: autocast, the evaluation's fast path)")
    p.add_argument("--train-paths", nargs="*", default=["eager fp32", "compiled fp32", "compiled bf16"],
                   choices=["eager fp32", "compiled fp32", "compiled bf16"],
                   help="training paths timed against the reference CapsNet (none: skip that table)")
    p.add_argument("--out", default=None, help="also write the tables as Markdown to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("fastpath-check", help="the attack fast path (bf16) against fp32 on the same images")
    p.add_argument("--models", nargs="+", default=["capsnet", "cnn_cr", "cnn_r"], help="the models to compute")
    p.add_argument("--data", default="mnist", choices=["mnist", "fashion_mnist"],
                   help="the dataset's committed default models and its Appendix C eps")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="results", help="results root (files under <out>/fastpath)")
    p.add_argument("--reports", default="reports")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--only-report", action="store_true", help="compute nothing; the report from what exists")
    p.add_argument("--compile", action="store_true", help="the bf16 side through torch.compile'd forwards")
    p.add_argument("--paper-cell", action="store_true",
                   help="instead: one paper-scale CapsNet R-PGD cell (N=1000), eager fp32 then compiled bf16, with "
                        "--steps iterations (1000: the full cell) -> reports/fastpath_paper_cell.md")
    p.set_defaults(func=cmd_fastpath)

    p = sub.add_parser("training-check", help="the training fast path (compiled, bf16) against eager fp32: "
                                              "5-epoch validation error of the default MNIST CapsNet")
    p.add_argument("--paths", nargs="+", default=["eager fp32", "compiled fp32", "compiled bf16"],
                   choices=["eager fp32", "compiled fp32", "compiled bf16"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--runs", default="runs")
    p.add_argument("--reports", default="reports")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--only-report", action="store_true", help="train nothing; the report from the finished runs")
    p.set_defaults(func=cmd_training_check)
