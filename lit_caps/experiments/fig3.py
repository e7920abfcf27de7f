"""CIFAR-10 (Qin et al., Section 5.4, Fig. 3): three CapsNet variants against defense-aware R-PGD.

* ``capsnet``: the CIFAR-10 config (``configs/arch/cifar10.yaml``) with the deeper reconstruction
  network (FC 1024 -> 2048 -> 2048 -> 3x32x32), masked input (the paper's CapsNet);
* ``capsnet_all``: "CapsNet All", every class capsule feeds the reconstruction network (no mask);
* ``capsnet_winner``: DeepCaps-style, only the winning capsule's vector (unplaced) feeds it.

Targeted R-PGD at eps = 8/255 (step 0.01 clipped to the ball), its beta searched as Table 3's is (the
scale's grid, then bisection levels around the worst: :mod:`lit_caps.experiments.search`); the worst
beta (highest undetected rate) per variant gives the undetected-rate-vs-FPR curve (white box). Black
box: the same attack crafted on a ``capsnet`` trained with another seed and measured on the seed-0
``capsnet`` (Table 7's protocol). The paper's CapsNet reaches 92.2% clean accuracy. ``smoke`` trains
on 7,000 images of CIFAR-10's test split (a documented stand-in: ``data.cifar10_split_test=true
data.val_size=1000``, tested on the other 2,000) for seconds of CPU; ``quick`` is the CPU recipe on the
real training split (45,000 / 5,000 validation, the 10,000 test images): the compact conv backbone under
the capsules (``arch/cifar10_fast.yaml``), one learning-rate cycle (``train/cifar_fast.yaml``), flips
and shifts; ``paper`` is the GPU config.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..config import compose, recipe_env_prefix
from ..io import write_text_atomic
from ..names import model_name
from ..detection import paired_test
from ..reporting.markdown import ci, dur, generation_line, num
from ..reporting.plots import plot_undetected_vs_fpr_panels
from ..runs import RunNotFoundError, ensure_run_cfg
from ..tracking import log_report
from .cells import iterations, resolve_device, results_dir, scale_settings
from .rows import result_row
from .search import Search, search_beta

VARIANTS = ("capsnet", "capsnet_all", "capsnet_winner")


def cifar_run(model: str, scale: str, *, seed: int = 0, runs_root="runs", train: bool = True,
              data_root: str | None = None, overrides=()):
    sc = scale_settings(scale, "fig3")
    ov = list(sc["overrides"]) + list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    cfg = compose(model, "cifar10", train=sc["train"], seed=seed, overrides=ov)
    return ensure_run_cfg(cfg, runs_root=runs_root, train=train, data_root=data_root,
                          shown_overrides=list(sc["overrides"]) + list(overrides))


def fig3(scale: str = "quick", runs_root="runs", out_dir="results", report_dir="reports", variants=VARIANTS, *, settings: dict | None = None,
         seed: int = 0, source_seed: int = 1, data_root: str | None = None, train: bool = True,
         device: str | None = None, progress: bool = False, wandb_log: bool = True, train_overrides=(),
         only_report: bool = False) -> pd.DataFrame:
    """Fig. 3 -> ``reports/fig3_cifar10_<scale>.{md,csv}`` and ``reports/figures/fig3_cifar10_<scale>.png``.

    ``only_report``: train and attack nothing; the report shows the finished cells, marks each
    unfinished search *partial* with its pending betas, and a missing black-box source as pending."""
    t0 = time.perf_counter()
    train = train and not only_report
    sc = dict(settings) if settings is not None else scale_settings(scale, "fig3")
    device = resolve_device(device)
    res_dir = results_dir(out_dir, scale)
    runs = {}
    for v in variants:
        r = cifar_run(v, scale, seed=seed, runs_root=runs_root, train=train, data_root=data_root,
                      overrides=train_overrides)
        if isinstance(r, str):
            raise RunNotFoundError(f"fig3: no trained {v} on CIFAR-10; train it with:\n    {r}")
        runs[v] = r
    source = cifar_run("capsnet", scale, seed=source_seed, runs_root=runs_root, train=train, data_root=data_root,
                       overrides=train_overrides)
    if isinstance(source, str) and not only_report:
        raise RunNotFoundError(f"fig3: no black-box source (capsnet, seed {source_seed}); train it with:\n    {source}")
    source_cmd, source = (source, None) if isinstance(source, str) else (None, source)
    # the worst beta of each (box, variant): the scale's grid, then ``refine`` bisection levels
    # around its worst (Table 3's search, lit_caps.experiments.search)
    searches = {("white", v): Search("cifar10", v, "r_pgd", True) for v in variants}
    if source is not None:
        searches[("black", "capsnet")] = Search("cifar10", "capsnet", "r_pgd", True)
    # computed CapsNet first (white, then black box: the black-vs-white claim is complete soonest), then
    # the other variants; the report keeps the dict's order
    for (box, v), srch in sorted(searches.items(), key=lambda kv: kv[0][1] != "capsnet"):
        search_beta(runs[v], srch, sc, out_dir=res_dir, device=device, attack_seed=0, only_report=only_report,
                    progress=progress, tag=f"fig3 {scale} {box}-box", source=source if box == "black" else None)
    worst = {key: srch.worst for key, srch in searches.items()}
    rows, outcomes = [], {}
    for (box, v), srch in searches.items():
        for c in srch.done():
            outcomes[(box, v, c.beta)] = c.result["examples"]
            r = result_row("fig3", "cifar10", scale, c, runs[v], None, source if box == "black" else None)
            r.update(box=box, variant=v, clean_test_acc_pct=round(100 * runs[v].summary["test_acc"], 2),
                     test_size=runs[v].summary.get("test_size"), train_wall_s=runs[v].summary.get("train_wall_s"),
                     worst=c is worst[(box, v)], search_complete=srch.complete)
            rows.append(r)
    df = pd.DataFrame(rows)
    def curve(key):
        u = worst[key].result["summary"]["undetected_vs_fpr"]
        return u["fpr"], u["undetected_rate"]

    curves_a = {f"{model_name(v)} (beta={worst[('white', v)].beta:g})": curve(("white", v))
                for v in variants if worst[("white", v)] is not None}
    curves_b = {f"{box}-box (beta={worst[(box, 'capsnet')].beta:g})": curve((box, "capsnet"))
                for box in ("white", "black") if worst.get((box, "capsnet")) is not None}
    png = Path(report_dir) / "figures" / f"fig3_cifar10_{scale}.png"
    plot_undetected_vs_fpr_panels({"(a) white-box R-PGD, three variants": curves_a,
                                   "(b) CapsNet: white vs black box": curves_b}, png,
                                  f"CIFAR-10 ({scale}): targeted R-PGD, eps 8/255, worst beta")
    it = iterations("cifar10", sc["steps"])
    md = [f"# Fig. 3: CIFAR-10, CapsNet variants against R-PGD (scale `{scale}`)", "",
          f"Generated by `{recipe_env_prefix()}make reproduce-fig3 SCALE={scale}` (= `lit-caps reproduce fig3 --scale {scale}`). "
          f"![Fig. 3](figures/{png.name})", "",
          "**Data and training.** " + _data_text(sc, runs, variants), "",
          f"**Attack.** Targeted R-PGD, eps 8/255, step 0.01 (clipped to the ball), {it} iterations (paper: 200, "
          f"our Appendix-C-style preset), N = {sc['n']} test images, beta grid {', '.join(f'{b:g}' for b in sc['betas'])} "
          f"then {sc.get('refine', 0)} bisection level(s) around the worst (Table 3's search); "
          f"the worst beta (highest undetected rate, bold) of each variant draws its curve. Black box: crafted on a "
          f"`capsnet` trained with seed {source_seed}, measured on the seed-{seed} `capsnet`.", "",
          "| box | variant | clean test acc. % | beta | success % [95% CI] | undetected % [95% CI] | best-iterate "
          "undetected % | ROC-AUC | N | wall time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        beta = f"**{r['beta']:g}**" if r["worst"] else f"{r['beta']:g}"
        md.append(f"| {r['box']} | {model_name(r['variant'])} | {r['clean_test_acc_pct']:.2f} | {beta} | "
                  f"{ci(r, 'success')} | {ci(r, 'undetected')} | {num(r['best_undetected_pct'])} | "
                  f"{num(r['roc_auc'], '{:.3f}')} | {r['n']} | {dur(r['wall_time_s'] or 0)} |")
    md += ["", "Worst beta and its resolution (distance to the nearest evaluated beta on either side): " + "; ".join(
        f"{box}-box {model_name(v)}: {num(worst[(box, v)].beta, '{:g}')} +- {num(srch.resolution(), '{:g}')}"
        for (box, v), srch in searches.items() if worst[(box, v)] is not None) + "."]
    partial = [f"{box}-box {model_name(v)} ({_pending_text(srch)})" for (box, v), srch in searches.items()
               if not srch.complete]
    if source_cmd is not None:
        partial.append(f"black-box CapsNet (no seed-{source_seed} source yet: `{source_cmd}`)")
    if partial:
        md += ["", "**Partial.** These searches are not finished, so their worst case may still rise: "
               + "; ".join(partial) + ". Rerun the command above to compute them (finished cells are reused)."]
    md += ["", "## The paper's claims, measured", "", *claims(rows, variants, outcomes)]
    models = list(runs.values()) + ([source] if source is not None else [])
    attack_s = sum(r["wall_time_s"] or 0 for r in rows)
    train_s = sum(m.summary.get("train_wall_s") or 0 for m in models)
    devices = ", ".join(sorted({str(r["device"]) for r in rows if r.get("device")})) or "none yet"
    md += ["", f"**Compute** (device: {devices}): {len(rows)} cells, {dur(attack_s)} of attack wall time summed over "
           "the cells (each cell's chunks, whichever process computed them; a cell that shared the machine with "
           f"another process shows a longer time); training the {len(models)} models: {dur(train_s)}."]
    md += ["", "## Models", "", "| variant | seed | epochs | test acc. % (N test) | train wall time | threshold | "
           "parameters | run |", "|---|---|---|---|---|---|---|---|"]
    for v, run in list(runs.items()) + ([("capsnet (black-box source)", source)] if source is not None else []):
        s = run.summary
        md.append(f"| {model_name(v.split()[0])}{' ' + ' '.join(v.split()[1:]) if ' ' in v else ''} | "
                  f"{s.get('seed')} | {s.get('epochs')} | {100 * s['test_acc']:.2f} ({s.get('test_size')}) | "
                  f"{dur(s.get('train_wall_s') or 0)} | {run.threshold:.4f} | {s.get('parameters'):,} | "
                  f"`{Path(s['run_dir']).name}` |")
    md += ["", generation_line(time.perf_counter() - t0)]
    stem = f"fig3_cifar10_{scale}"
    write_text_atomic(Path(report_dir) / f"{stem}.csv", df.to_csv(index=False))
    write_text_atomic(Path(report_dir) / f"{stem}.md", "\n".join(md) + "\n")
    print(f"[fig3 {scale}] report: {Path(report_dir) / f'{stem}.md'}", flush=True)
    if wandb_log and not only_report:
        log_report("fig3-cifar10", scale, df.astype(str), {"fig3": png}, {}, res_dir)
    return df


def _pending_text(srch: Search) -> str:
    """What an unfinished search still needs: its pending grid betas (the refinement path is not
    determined before the grid is done), else its pending refinement betas."""
    grid = [b for b in srch.pending if b in srch.grid]
    if grid:
        more = f", then {srch.refine} refinement level(s)" if srch.refine else ""
        return f"pending grid beta {', '.join(f'{b:g}' for b in grid)}{more}"
    return f"pending beta {', '.join(f'{b:g}' for b in srch.pending)}"


def _verdict(lo_row: dict, hi_row: dict, k: str = "undetected") -> str:
    """Whether ``lo_row``'s ``k`` rate is below ``hi_row``'s: ``holds`` / ``does not hold`` when the
    Wilson 95% intervals are disjoint, otherwise which way the point estimates lean."""
    a, b = lo_row[f"{k}_pct"], hi_row[f"{k}_pct"]
    if lo_row[f"{k}_ci_hi"] < hi_row[f"{k}_ci_lo"]:
        return "holds"
    if lo_row[f"{k}_ci_lo"] > hi_row[f"{k}_ci_hi"]:
        return "does not hold (the reverse, outside the 95% CIs)"
    return f"not resolved (95% CIs overlap; the point estimates {'agree' if a < b else 'disagree'})"


def _paired(lo_row: dict, hi_row: dict, outcomes: dict | None, k: str = "undetected",
            names: tuple[str, str] = ("the lower", "the higher")) -> str:
    """The paired form of :func:`_verdict` (:func:`~lit_caps.reporting.markdown.paired_test`) on the
    rows' per-example outcomes, ``outcomes[(box, variant, beta)]``; empty without them."""
    key = lambda r: (r["box"], r["variant"], r["beta"])  # noqa: E731
    return paired_test((outcomes or {}).get(key(lo_row)), (outcomes or {}).get(key(hi_row)), k, names)


def claims(rows: list[dict], variants=VARIANTS, outcomes: dict | None = None) -> list[str]:
    """Section 5.4's claims (and the issue's detection claim) as verdicts computed from the rows of
    :func:`fig3`: the worst beta of each search (``worst``), and the beta = 1 cell, where R-PGD's
    detector stage takes zero steps, i.e. plain targeted PGD with the same step and budget. Each
    comparison gets the intervals' verdict (:func:`_verdict`, the rule stated first) and, given the
    cells' per-example ``outcomes``, the paired test's (:func:`_paired`)."""
    def pick(box, v, *, beta=None):
        rs = [r for r in rows if r["box"] == box and r["variant"] == v and
              (r["worst"] if beta is None else r["beta"] == beta)]
        return rs[0] if rs else None

    def tag(r):
        return "" if r is None or r.get("search_complete", True) else " (search partial)"

    out = []
    # 1. the detector separates clean from adversarial inputs (ROC-AUC over the distance)
    parts = []
    for v in variants:
        pgd, w = pick("white", v, beta=1.0), pick("white", v)
        if pgd is None and w is None:
            continue
        parts.append(f"{model_name(v)}: PGD {num(pgd and pgd['roc_auc'], '{:.3f}') or 'pending'}, worst R-PGD "
                     f"{num(w and w['roc_auc'], '{:.3f}') or 'pending'}{tag(w)}")
    aucs = [r["roc_auc"] for r in (pick("white", v, beta=1.0) for v in variants) if r and r["roc_auc"] is not None]
    if aucs:
        lo = min(aucs)
        verdict = ("holds" if lo >= 0.9 else "partly (0.7 <= AUC < 0.9 for some variant)" if lo >= 0.7
                   else "does not hold (AUC < 0.7 for some variant)")
        out.append(f"- *The detector separates clean from adversarial CIFAR-10 inputs* (ROC-AUC of the reconstruction "
                   f"distance, clean vs successful adversarial, white box; rule: holds at AUC >= 0.9 for every variant "
                   f"against plain PGD): {verdict}. " + "; ".join(parts) + ". 0.5 is chance; below it the successful "
                   "adversarial inputs lie closer to their reconstructions than clean inputs do.")
    else:
        out.append("- *The detector separates clean from adversarial CIFAR-10 inputs*: pending (no beta = 1 cell).")
    # 2. black box is much weaker than white box (CapsNet)
    wb, bb = pick("white", "capsnet"), pick("black", "capsnet")
    if wb and bb:
        out.append(f"- *Black-box R-PGD is much less undetected than white-box on CapsNet*: {_verdict(bb, wb)}. "
                   f"Undetected at 5% FPR, worst beta: black box {ci(bb, 'undetected')} (beta {bb['beta']:g}){tag(bb)} "
                   f"vs white box {ci(wb, 'undetected')} (beta {wb['beta']:g}){tag(wb)}, "
                   f"{bb['undetected_pct'] - wb['undetected_pct']:+.1f} points"
                   f"{_paired(bb, wb, outcomes, names=('black box', 'white box'))}.")
    else:
        out.append("- *Black-box R-PGD is much less undetected than white-box on CapsNet*: pending.")
    # 3. class-conditional reconstruction: CapsNet < DeepCaps < CapsNet All (undetected, white box)
    ws = {v: pick("white", v) for v in variants}
    if all(ws.values()):
        order = sorted(variants, key=lambda v: ws[v]["undetected_pct"])
        vs = [f"CapsNet below {model_name(v)}: {_verdict(ws['capsnet'], ws[v])}"
              f"{_paired(ws['capsnet'], ws[v], outcomes, names=('CapsNet', model_name(v)))}."
              for v in variants if v != "capsnet"]
        out.append(f"- *CapsNet (class-conditional) has the lowest white-box undetected rate; the paper's order is "
                   f"CapsNet < DeepCaps < CapsNet All*: ours, lowest first: "
                   + " < ".join(f"{model_name(v)} {ci(ws[v], 'undetected')}{tag(ws[v])}" for v in order)
                   + f". {' '.join(vs)} Paper's order reproduced: "
                   f"{'yes' if order == ['capsnet', 'capsnet_winner', 'capsnet_all'] else 'no'} (point estimates).")
    else:
        out.append("- *CapsNet has the lowest white-box undetected rate of the three variants*: pending "
                   f"({', '.join(model_name(v) for v in variants if not ws[v])}).")
    # 4. R-PGD: lower success but higher undetected than PGD (beta = 1)
    for v in variants:
        w, pgd = pick("white", v), pick("white", v, beta=1.0)
        if not (w and pgd):
            continue
        if w is pgd:
            out.append(f"- *R-PGD: lower success, higher undetected rate than PGD*, {model_name(v)}: the worst beta is 1 "
                       "(PGD itself), so the detector stage adds nothing here.")
            continue
        out.append(f"- *R-PGD: lower success, higher undetected rate than PGD*, {model_name(v)} (worst beta "
                   f"{w['beta']:g}{tag(w)} vs beta 1): success {ci(w, 'success')} vs {ci(pgd, 'success')}, lower: "
                   f"{_verdict(w, pgd, 'success')}{_paired(w, pgd, outcomes, 'success', ('R-PGD', 'PGD'))}; undetected "
                   f"{ci(w, 'undetected')} vs {ci(pgd, 'undetected')}, higher: {_verdict(pgd, w)}"
                   f"{_paired(pgd, w, outcomes, names=('PGD', 'R-PGD'))}.")
    return out


def _data_text(sc: dict, runs: dict, variants) -> str:
    """The report's data-and-training paragraph: which split, the recipe, and the clean accuracy
    against the paper's 92.2%."""
    split_test = "data.cifar10_split_test=true" in sc["overrides"]
    where = ("Training on a split of CIFAR-10's test split: the models train on 7,000 of its images, validate "
             "(threshold) on 1,000 and are tested on the other 2,000 (`data.cifar10_split_test=true "
             "data.val_size=1000`, a fixed seeded split). " if split_test else
             "CIFAR-10's training split: 45,000 images to train, 5,000 held out for validation (the threshold), "
             "tested on the 10,000 test images. ")
    recipe = f"Training profile `{sc['train']}`" + (f" with `{' '.join(sc['overrides'])}`" if sc["overrides"] else "")
    accs = {v: 100 * runs[v].summary["test_acc"] for v in variants}
    lo, hi = min(accs.values()), max(accs.values())
    acc = f"{lo:.1f}%" if round(lo, 1) == round(hi, 1) else f"{lo:.1f}-{hi:.1f}%"
    gap = f"{92.2 - hi:.1f}" if round(lo, 1) == round(hi, 1) else f"{92.2 - hi:.1f}-{92.2 - lo:.1f}"
    return (where + f"{recipe}; {runs[variants[0]].summary.get('epochs')} epochs. Clean test accuracy "
            f"{acc} against the paper's 92.2% for its CapsNet ({gap} points below it); the project's goal for "
            "this figure is >= 85%.")


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce fig3``: :func:`fig3` (CIFAR-10); ``--betas`` / ``--refine`` replace the
    scale's grid / refinement levels."""
    sc = dict(sc)
    if ctx.betas:
        sc["betas"] = [float(b) for b in ctx.betas]
    if ctx.refine is not None:
        sc["refine"] = int(ctx.refine)
    fig3(ctx.scale, ctx.runs_root, ctx.out_dir, ctx.report_dir, settings=sc, seed=ctx.seed, source_seed=ctx.source_seed,
         data_root=ctx.data_root, train=ctx.train, device=ctx.device, progress=ctx.progress, wandb_log=ctx.wandb,
         only_report=ctx.only_report)
