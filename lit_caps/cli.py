"""``lit-caps``: thin entry points over the library.

    lit-caps fit --model capsnet --data mnist [--arch mnist] [--train default] [--seed 0] [key.sub=value ...]
    lit-caps bench [--models ...] [--archs ...]
    lit-caps report clean-error|compute [--runs runs] [--out reports]
    lit-caps reproduce NAME --data mnist [fashion_mnist ...] --scale quick   (NAME: lit_caps.experiments.REGISTRY)
                       [--only-report] [--runs runs] [--out results] [--reports reports]
    lit-caps attack --data mnist --model capsnet --attack r_pgd --targeted true --beta 0.45 --scale quick
    lit-caps sweep local|expand|collect sweeps/<file>.yaml   (W&B sweep YAML without a W&B server)
    lit-caps store save|restore|verify   (the committed results and models: reports/results, reports/models)

A mistake the user can fix (an unknown config key or name, missing data, a bad attack argument, a
damaged file, a folder that cannot be written, a busy run) is printed as one line,
``lit-caps: error: <what is wrong and the fix>``, and exits 2, before anything is created;
``LIT_CAPS_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import InvalidArgumentError, user_error_message
from .experiments import REGISTRY, Context
from .bench_commands import add_parsers as add_bench_parsers
from .store_commands import add_parser as add_store_parser
from .sweep_commands import ATTACK_DESCRIPTION, add_attack_args, check_attack_cell, check_sweep
from .sweep_commands import add_parser as add_sweep_parser

PROG = "lit-caps"


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


def _check_fit(args) -> dict:
    """The config (keys, types, names checked) of ``lit-caps fit``, after every check that needs no
    file written: the data on disk, a writable run folder that holds no other run."""
    from .config import compose
    from .validate import check_fit

    cfg = compose(args.model, args.data, args.arch, args.train, args.seed, args.overrides, args.config)
    check_fit(cfg, runs_root=args.runs, run_dir=args.run_dir)
    return cfg


def cmd_fit(args) -> int:
    cfg = _check_fit(args)  # before fit() writes config.yaml, opens a W&B run or builds the model
    from .training.fit import fit

    summary = fit(cfg, runs_root=args.runs, run_dir=args.run_dir)
    print(f"[lit-caps] {summary['dataset']}/{summary['model']}: test error {summary['test_error'] * 100:.2f}% "
          f"after {summary['epochs']} epochs, threshold {summary['threshold']:.4f} ({summary['run_dir']})")
    return 0


def _check_evaluate(args) -> None:
    """``lit-caps evaluate``: the overrides, the checkpoint and its run config, the attack arguments,
    the output folder and the data, before the model is loaded and the clean test pass runs."""
    from .config import check_config, check_overrides, parse_overrides, set_dotted
    from .validate import check_attack_args, check_ckpt, check_config_data, check_writable

    check_overrides(args.overrides)
    for a in args.attacks:
        check_attack_args(a)
    for b in args.beta:
        check_attack_args(beta=b)
    check_attack_args(eps=args.eps, steps=args.steps, step_size=args.step_size, n=args.n, chunk_size=args.chunk_size)
    lt = args.limit_test_batches
    if isinstance(lt, bool) or not isinstance(lt, (int, float)) or lt <= 0 or (isinstance(lt, float) and lt > 1):
        raise _invalid(f"--limit-test-batches {lt}: must be a number of batches >= 1 or a fraction in (0, 1]")
    cfg = check_ckpt(args.ckpt)
    for k, v in parse_overrides(args.overrides):
        set_dotted(cfg, k, v)
    check_config(cfg, where=f"the run config of --ckpt {args.ckpt}")
    check_attack_args(dataset=cfg["data"]["name"])
    check_writable(args.out, "--out")
    check_config_data(cfg)


def _invalid(msg: str):
    return InvalidArgumentError(msg)


def cmd_evaluate(args) -> int:
    _check_evaluate(args)
    import hashlib
    import json
    from pathlib import Path

    import lightning as L

    from .evaluation import ensure_writable, model_hash
    from .evaluation.callback import AttackEvaluation, expand_attack_specs
    from .runs import load_run
    from .training.loggers import make_loggers

    cfg, dm, module = load_run(args.ckpt, args.overrides)
    common = {k: v for k, v in (("eps", args.eps), ("steps", args.steps), ("step_size", args.step_size)) if v is not None}
    targeted = {"both": ("targeted", "untargeted"), "true": ("targeted",), "false": ("untargeted",)}[args.targeted]
    specs = expand_attack_specs(args.attacks, targeted=targeted, betas=args.beta, **common)
    # The result files are per setting under <out>/<dataset>/<model>/ (shared with the tables; a result
    # of other weights is kept under superseded/, never written over). This evaluation's figures,
    # metrics CSV and W&B run are keyed by the run and the settings (weights, attacks, n, seed, chunk
    # size), so an evaluate of another checkpoint into the same --out never touches them.
    run_name = Path(args.ckpt).parent.parent.name
    key = hashlib.sha256(json.dumps({"model_hash": model_hash(module.eval_model()), "specs": specs, "n": args.n,
                                     "seed": args.seed, "chunk_size": args.chunk_size},
                                    sort_keys=True, default=str).encode()).hexdigest()[:8]
    eval_dir = Path(args.out) / cfg["data"]["name"] / cfg["model"] / "evaluate" / f"{run_name}-{key}"
    ensure_writable(eval_dir, root=args.out)
    cb = AttackEvaluation(specs, n=args.n, seed=args.seed, out_dir=args.out, chunk_size=args.chunk_size,
                          figures_dir=str(eval_dir / "figures"), checkpoint=args.ckpt)
    cfg = dict(cfg, logger=dict(cfg.get("logger", {}), wandb=not args.no_wandb))
    loggers = make_loggers(cfg, eval_dir, job_type="evaluate")  # W&B id: <dataset>-<run name>-<key>-evaluate
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices, inference_mode=False, logger=loggers,
                        callbacks=[cb], enable_checkpointing=False, limit_test_batches=args.limit_test_batches)
    trainer.test(module, datamodule=dm, verbose=False)
    if trainer.is_global_zero:
        print(f"\n{'attack':42s} {'success':>8s} {'undetected':>10s} {'best-iter undet.':>16s}")
        for r in cb.results:
            s = r["summary"]
            print(f"{r['name']:42s} {100 * s['success_rate']:7.1f}% {100 * s['undetected_rate']:9.1f}% "
                  f"{100 * s['best_undetected_rate']:15.1f}%")
        folders = sorted({str(Path(r["path"]).parent) for r in cb.results})  # where the files are, not what they say
        print(f"results: {', '.join(folders)}")
        print(f"figures, metrics CSV, W&B run: {eval_dir}")
    return 0


def cmd_report(args) -> int:
    from .experiments.compute import compute_report
    from .experiments.table4 import clean_error_report

    if args.what == "clean-error":
        clean_error_report(args.runs, args.out)
    elif args.what == "compute":
        compute_report(args.out)
    return 0


def _check_reproduce(args) -> None:
    from .validate import check_attack_args, check_choice, check_data, check_model, check_positive_int, check_writable

    exp = REGISTRY[args.what]
    for d in args.data or ():
        check_attack_args(dataset=d)
    for m in args.models:
        check_model(m)
    for b in args.betas or ():
        check_attack_args(beta=b)
    check_positive_int("--threads", args.threads)
    check_positive_int("--refine", args.refine, minimum=0)
    if args.device is not None:
        check_choice("device", str(args.device).split(":")[0], ("cpu", "cuda", "mps"))
    for flag, path in (("--out", args.out), ("--reports", args.reports)):
        check_writable(path, flag)
    if not args.no_train and not args.only_report and args.what != "table2":
        check_writable(args.runs, "--runs")
    if args.only_report or not exp.checks_data:
        return  # table3/table6 write a report that names a missing dataset as not available
    sc = _context(args).section(exp.section)
    split_test = "data.cifar10_split_test=true" in (sc.get("overrides") or ())
    for d in (exp.datasets if exp.fixed_data else (args.data or exp.datasets)):
        check_data(d, args.data_root, cifar10_split_test=split_test)


def _context(args) -> Context:
    return Context(scale=args.scale, runs_root=args.runs, out_dir=args.out, report_dir=args.reports,
                   models=tuple(args.models), seed=args.seed, attack_seed=args.attack_seed,
                   only_report=args.only_report, train=not args.no_train, device=args.device,
                   data_root=args.data_root, progress=args.progress, wandb=not args.no_wandb,
                   datasets=tuple(args.data) if args.data else None,
                   betas=tuple(args.betas) if args.betas else None, refine=args.refine,
                   targeted={"both": (True, False), "true": (True,), "false": (False,)}[args.targeted],
                   source_seed=args.source_seed)


def cmd_reproduce(args) -> int:
    _check_reproduce(args)
    import torch

    from . import store

    if args.threads:
        torch.set_num_threads(args.threads)
    REGISTRY[args.what](_context(args))
    if store.is_store_reports(args.reports):  # the committed reports: their results join the store
        written = store.save_results(args.out)
        if written:
            print(f"[lit-caps] {len(written)} result file(s) added to the committed store {store.results_root()} "
                  f"(commit them with the reports)", flush=True)
    return 0


def _check_attack(args) -> None:
    from .validate import check_choice, check_data, check_positive_int, check_writable

    check_attack_cell(args.data, args.model, args.attack, args.beta)
    check_positive_int("--threads", args.threads)
    if args.device is not None:
        check_choice("device", str(args.device).split(":")[0], ("cpu", "cuda", "mps"))
    check_writable(args.out, "--out")
    if args.train:
        check_writable(args.runs, "--runs")
    check_data(args.data, args.data_root)


def cmd_attack(args) -> int:
    _check_attack(args)
    import torch

    from .experiments.attack_cell import run_cell

    if args.threads:
        torch.set_num_threads(args.threads)
    s = run_cell(args.data, args.model, args.attack, args.targeted, args.beta, args.scale,
                            seed=args.seed, attack_seed=args.attack_seed, runs_root=args.runs, out_dir=args.out,
                            train=args.train, device=args.device, data_root=args.data_root,
                            progress=not args.no_progress, wandb_log=not args.no_wandb,
                            adaptive_overrides={k: v for k, v in (("lam", args.lam), ("step_size", args.step_size),
                                                                  ("loss", args.loss)) if v is not None})
    print(f"[lit-caps attack] {args.data}/{args.model} {args.attack} targeted={args.targeted} beta={args.beta}: "
          f"success_rate {s['success_rate']:.4f}, undetected_rate {s['undetected_rate']:.4f}, "
          f"best_undetected_rate {s['best_undetected_rate']:.4f} (N={s['n']}; {s['result']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lit-caps", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="train (or resume, or reuse) one model, then test it")
    _add_experiment_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="attack a trained model and its detector (one result file per setting)")
    p.add_argument("--ckpt", required=True, help="runs/<dataset>/<run>/checkpoints/last.ckpt")
    p.add_argument("--attacks", nargs="+", default=["fgsm", "bim", "pgd", "cw"],
                   help="fgsm bim pgd cw r_fgsm r_bim r_pgd")
    p.add_argument("--targeted", choices=["both", "true", "false"], default="both")
    p.add_argument("--beta", nargs="+", type=float, default=[0.5], help="beta values for the R-* attacks")
    p.add_argument("--n", type=int, default=1000, help="examples of the fixed seeded test subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=None, help="override the dataset's Appendix C bound")
    p.add_argument("--steps", type=int, default=None, help="override the preset's iterations")
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--chunk-size", type=int, default=100)
    p.add_argument("--out", default="results")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--limit-test-batches", type=lambda v: float(v) if "." in v else int(v), default=1.0,
                   help="clean test pass before the attacks: a fraction (1.0 = all) or a number of batches")
    p.add_argument("--no-wandb", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/data")
    p.set_defaults(func=cmd_evaluate)

    add_bench_parsers(sub)

    p = sub.add_parser("report", help="write a report under reports/ from finished runs")
    p.add_argument("what", choices=["clean-error", "compute"],
                   help="clean-error: Table 4; compute: the attack and training hours behind the committed reports")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="reports")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="a paper table or figure (resumable), its report beside the paper's numbers",
                       description="\n".join(f"{n:10s} {e.help} (make {e.make_target})" for n, e in REGISTRY.items())
                       + "\nScales (lit_caps/configs/scales/): smoke (seconds), quick (a 2-core CPU), paper "
                         "(Appendix C).", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=list(REGISTRY), metavar="NAME", help=", ".join(REGISTRY))
    p.add_argument("--data", nargs="+", default=None,
                   help="dataset(s) (default: the experiment's; table2 and fig3 have their own)")
    p.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--only-report", action="store_true",
                   help="compute nothing: write the report from the result files that exist (others: pending)")
    p.add_argument("--runs", default="runs", help="root folder of `lit-caps fit` runs")
    p.add_argument("--out", default="results", help="result files (one per attack setting)")
    p.add_argument("--reports", default="reports", help="where the Markdown/CSV reports and figures go")
    p.add_argument("--models", nargs="+", default=["capsnet", "cnn_cr", "cnn_r"])
    p.add_argument("--seed", type=int, default=0, help="seed of the trained models")
    p.add_argument("--attack-seed", type=int, default=0, help="seed of the test subset and the targets")
    p.add_argument("--source-seed", type=int, default=1, help="table7: seed of the black-box substitute models")
    p.add_argument("--betas", nargs="+", type=float, default=None, help="rpgd-beta / table7 / fig3: beta grid "
                   "(default: the scale's)")
    p.add_argument("--targeted", choices=["both", "true", "false"], default="both",
                   help="table3, table6, rpgd-beta and adaptive: compute only these (the reports keep both)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-root", default=None, help="override the runs' data.root")
    p.add_argument("--progress", action="store_true", help="a progress bar over each attack's chunks")
    p.add_argument("--refine", type=int, default=None, help="table3/table6/fig3: refinement levels around the worst "
                   "beta (default: the scale's)")
    p.add_argument("--no-train", action="store_true", help="never train; missing models are pending (or an error)")
    p.add_argument("--no-wandb", action="store_true", help="no W&B run for the report")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("attack", help="one attack cell at a scale's settings (what W&B sweep agents run)",
                       description=ATTACK_DESCRIPTION)
    add_attack_args(p)
    p.set_defaults(func=cmd_attack)

    add_sweep_parser(sub)
    add_store_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .config import check_recipe

        check_recipe()  # LIT_CAPS_RECIPE applies to every config any command composes
        if args.cmd == "sweep":
            check_sweep(args)
        return args.func(args)
    except Exception as e:  # noqa: BLE001: user errors become one line, anything else is re-raised
        msg = user_error_message(e, sweep=args.cmd == "sweep")
        if msg is None or os.environ.get("LIT_CAPS_DEBUG", "").strip() not in ("", "0"):
            raise
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
