"""``lit-caps attack`` and ``lit-caps sweep``: the one-cell attack command that W&B sweep agents run
(one per GPU), and the local sweep runner's subcommands (:mod:`lit_caps.sweeps`) with the check that
a sweep's runs are valid ``lit-caps attack`` calls before the first one starts."""
from __future__ import annotations

import argparse
import difflib
import shlex
from pathlib import Path

import pandas as pd

from . import sweeps
from .errors import InvalidArgumentError, UserError
from .sweeps import build_command, collect, expand, load_sweep, run_id, run_local
from .validate import check_attack_args, check_model

PROG = "lit-caps"


def parse_bool(v) -> bool:
    """true/false as W&B sweeps pass them (``--targeted=True``) and as people type them."""
    if isinstance(v, bool):
        return v
    t = str(v).strip().lower()
    if t in ("1", "true", "yes", "y", "t"):
        return True
    if t in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def check_attack_cell(data, model, attack, beta) -> None:
    """One `lit-caps attack` cell's names and beta (also every run of an attack sweep)."""
    check_attack_args(attack, dataset=data, beta=beta)
    check_model(model)


ATTACK_DESCRIPTION = ("Attack one trained model at the settings of --scale (R-attacks: Table 3's, others: Table 1's); "
                      "writes the result file the tables read, logs success_rate/undetected_rate to W&B (offline "
                      "without a key), and to $LIT_CAPS_SWEEP_METRICS when set. Accepts W&B's --key=value form.")


def add_attack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist")
    p.add_argument("--model", default="capsnet")
    p.add_argument("--attack", default="r_pgd", help="fgsm bim pgd cw r_fgsm r_bim r_pgd; adaptive: "
                                                     "selective_pgd orthogonal_pgd apgd_joint")
    p.add_argument("--targeted", type=parse_bool, default=True)
    p.add_argument("--beta", type=float, default=None, help="R-attacks' beta (default: the preset's 0.5)")
    p.add_argument("--lam", type=float, default=None,
                   help="adaptive attacks: APGD joint's detector weight lambda (default: the scale's)")
    p.add_argument("--step-size", type=float, default=None,
                   help="adaptive attacks: Selective / Orthogonal PGD's step (default: the scale's)")
    p.add_argument("--loss", default=None, choices=["ce", "cw", "dlr", "logodds"],
                   help="adaptive attacks: the classifier loss (default: the scale's)")
    p.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--seed", type=int, default=0, help="seed of the trained model")
    p.add_argument("--attack-seed", type=int, default=0, help="seed of the test subset and the targets")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="results")
    p.add_argument("--train", type=parse_bool, default=False, help="train the model if missing (default: error)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-wandb", action="store_true")


def check_sweep(args) -> None:
    """A sweep file loads and expands; when its command is `lit-caps attack`, every run's parameters
    are options of it with valid values (a bad beta fails now, not in each of its runs)."""
    if args.sweep_cmd == "collect":
        if not Path(args.state_dir).is_dir():
            raise InvalidArgumentError(f"no sweep state folder at {args.state_dir} (`lit-caps sweep local` makes "
                           f"results/sweeps/<sweep name>/)")
        return
    path = Path(args.sweep)
    if not path.is_file():
        raise InvalidArgumentError(f"no sweep file {args.sweep}")
    if args.count is not None and args.count < 1:
        raise InvalidArgumentError(f"--count {args.count}: must be a positive number of runs")
    sweep = sweeps.load_sweep(path)
    runs = sweeps.expand(sweep, args.count, args.seed)
    command = [str(c) for c in sweep.get("command") or sweeps.DEFAULT_COMMAND]
    program = str(sweep.get("program") or "")
    head = command[:command.index("attack")] if "attack" in command else []
    if not any(c.endswith(PROG) or "lit_caps" in c or (c == "${program}" and ("lit_caps" in program or
                                                                                program.endswith(PROG)))
               for c in head):
        return
    probe = argparse.ArgumentParser(add_help=False)
    add_attack_args(probe)
    options = {o[2:] for a in probe._actions for o in a.option_strings if o.startswith("--")}
    defaults = vars(probe.parse_args([]))
    for params in runs:
        for k in params:
            if k not in options:
                best = difflib.get_close_matches(k, sorted(options), n=1, cutoff=0.6)
                raise InvalidArgumentError(f"{path}: parameter {k!r} is not an option of `lit-caps attack`"
                               + (f"; did you mean {best[0]!r}?" if best else f"; options: {', '.join(sorted(options))}"))
        p = {**defaults, **{k.replace("-", "_"): v for k, v in params.items()}}
        beta = p.get("beta")
        if isinstance(beta, str):
            try:
                beta = float(beta)
            except ValueError:
                raise InvalidArgumentError(f"{path}: beta={beta!r}: must be a number in [0, 1]") from None
        try:
            check_attack_cell(p["data"], p["model"], p["attack"], beta)
        except UserError as e:
            raise type(e)(f"{path}: {e}") from None


# -- the sweep subcommands ------------------------------------------------------------------------------
def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N such as 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return i, n


def _cmd_local(args) -> int:
    records = run_local(args.sweep, count=args.count, seed=args.seed, shard=args.shard,
                        state_dir=args.state_dir, dry_run=args.dry_run)
    return int(any(r["rc"] not in (0, None) for r in records))


def _cmd_expand(args) -> int:
    sweep = load_sweep(args.sweep)
    state = Path("results") / "sweeps" / sweep["name"]
    for i, params in enumerate(expand(sweep, args.count, args.seed)):
        rid = run_id(i, params)
        print(f"# {rid} {sweeps.format_params(params)}\n{shlex.join(build_command(sweep, params, state / rid, write_json=False))}")
    return 0


def _cmd_collect(args) -> int:
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(collect(args.state_dir).to_string(index=False))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep local|expand|collect`` on an ``add_subparsers()`` object."""
    p = subparsers.add_parser("sweep", help="run a W&B sweep YAML locally (grid/random), no W&B server needed",
                              description=sweeps.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sweep_cmd", required=True)
    q = sub.add_parser("local", help="run the sweep's commands one after another (resumable)")
    q.add_argument("sweep", metavar="SWEEP_YAML")
    q.add_argument("--count", type=int, default=None, help="number of runs (random: required unless run_cap)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random search")
    q.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="run only runs i with i %% N == I")
    q.add_argument("--state-dir", default=None, help="default: results/sweeps/<sweep name>")
    q.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    q.set_defaults(func=_cmd_local)
    q = sub.add_parser("expand", help="print the run list and the commands, as a shell script")
    q.add_argument("sweep", metavar="SWEEP_YAML")
    q.add_argument("--count", type=int, default=None)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_expand)
    q = sub.add_parser("collect", help="print a table of all runs in a sweep state folder")
    q.add_argument("state_dir", metavar="STATE_DIR")
    q.set_defaults(func=_cmd_collect)
    return p
