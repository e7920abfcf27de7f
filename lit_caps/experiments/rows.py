"""Rows and Markdown tables of attack cells: one row per cell (rates with their 95% intervals, the
paper's numbers beside them, settings, model identity), and the tables and header/footer every
attack report shares."""
from __future__ import annotations

from pathlib import Path

from ..config import recipe_env_prefix
from ..names import attack_name, model_name
from ..reporting.markdown import ci, diff, dur, generation_line, num, pct
from ..runs import LoadedRun
from .cells import Cell, reductions


def result_row(table: str, dataset: str, scale: str, cell: Cell, run, paper: tuple | None, source=None) -> dict:
    r = cell.result or {}
    st = r.get("settings") or {}
    a = st.get("attack_settings") or {}
    row = {"table": table, "dataset": dataset, "scale": scale, "model": cell.model, "attack": cell.attack,
           "targeted": cell.targeted, "beta": cell.beta, "status": cell.status}
    s = r.get("summary") if cell.complete else None
    for k in ("success", "undetected", "best_undetected"):
        row[f"{k}_pct"] = pct(s[f"{k}_rate"]) if s else None
        ci = s[f"{k}_ci"] if s else (None, None)
        row[f"{k}_ci_lo"], row[f"{k}_ci_hi"] = pct(ci[0]), pct(ci[1])
    row["paper_success_pct"], row["paper_undetected_pct"] = paper if paper else (None, None)
    row["diff_success_pct"] = None if s is None or paper is None else round(row["success_pct"] - paper[0], 1)
    row["diff_undetected_pct"] = None if s is None or paper is None else round(row["undetected_pct"] - paper[1], 1)
    row.update({
        "n": s["n"] if s else st.get("n"), "clean_accuracy_pct": pct(s["clean_accuracy"]) if s else None,
        "roc_auc": None if not s or s.get("roc_auc") is None else round(s["roc_auc"], 4),
        "mean_linf": None if not s or s.get("mean_linf") is None else round(s["mean_linf"], 4),
        "mean_l2": None if not s or s.get("mean_l2") is None else round(s["mean_l2"], 4),
        "eps": st.get("eps", a.get("eps")), "step_size": a.get("step_size"),
        "steps": 1 if cell.attack in ("fgsm", "r_fgsm") else a.get("steps"),
        "cw_binary_search_steps": a.get("binary_search_steps"), "cw_initial_const": a.get("initial_const"),
        "attack_seed": st.get("seed"), "chunk_size": st.get("chunk_size"), "threshold": st.get("threshold"),
        "wall_time_s": round(r["run"]["wall_time_s"], 1) if cell.complete else None,
        "device": r["run"]["device"] if cell.complete else None, "result": r.get("path"),
        "torch_version": r["run"].get("torch_version") if cell.complete else None,
    })
    if isinstance(run, LoadedRun):
        sm = run.summary
        row.update({"model_seed": sm.get("seed"), "arch": sm.get("arch"), "epochs": sm.get("epochs"),
                    "config_hash": sm.get("config_hash"), "model_hash": run.model_hash,
                    "checkpoint": run.checkpoint})
    if source is not None and isinstance(source, LoadedRun):
        sm = source.summary
        row.update({"source_seed": sm.get("seed"), "source_epochs": sm.get("epochs"),
                    "source_config_hash": sm.get("config_hash"), "source_model_hash": source.model_hash,
                    "source_checkpoint": source.checkpoint})
    return row


def detail_table(rows: list[dict], with_beta=False) -> list[str]:
    head = "| model | attack | targeted |" + (" beta |" if with_beta else "") + \
        " success % [95% CI] | paper | diff | undetected % [95% CI] | paper | diff |" \
        " best-iterate undetected % [95% CI] | clean acc. % | N | wall time | device |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {model_name(r['model'])} | {attack_name(r['attack'])} | "
            f"{'yes' if r['targeted'] else 'no'} |" + (f" {num(r['beta'], '{:g}')} |" if with_beta else "") +
            f" {ci(r, 'success')} | {num(r['paper_success_pct'], '{:g}')} | {diff(r['diff_success_pct'])} |"
            f" {ci(r, 'undetected')} | {num(r['paper_undetected_pct'], '{:g}')} | {diff(r['diff_undetected_pct'])} |"
            f" {ci(r, 'best_undetected')} | {num(r['clean_accuracy_pct'])} | {r['n'] or ''} |"
            f" {dur(r['wall_time_s']) if r['wall_time_s'] is not None else ''} | {r['device'] or ''} |")
    return lines


def settings_table(rows: list[dict]) -> list[str]:
    seen, lines = set(), ["| attack | eps | step size | iterations | CW binary-search steps | CW initial c | N | "
                          "attack seed | chunk size |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r["attack"], r["eps"], r["step_size"], r["steps"], r["cw_binary_search_steps"], r["cw_initial_const"],
               r["n"], r["attack_seed"], r["chunk_size"])
        if key in seen or r["n"] is None:
            continue
        seen.add(key)
        lines.append(f"| {attack_name(r['attack'])} | {num(r['eps'], '{:g}') or 'none (L2)'} | "
                     f"{num(r['step_size'], '{:g}')} | {num(r['steps'], '{:d}')} | "
                     f"{num(r['cw_binary_search_steps'], '{:d}')} | {num(r['cw_initial_const'], '{:g}')} | "
                     f"{r['n']} | {r['attack_seed']} | {r['chunk_size']} |")
    return lines


def models_table(runs: dict, title="model") -> list[str]:
    lines = [f"| {title} | run | seed | arch | epochs | test error % | threshold (val FPR) | config hash | "
             "model hash | checkpoint |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m, run in runs.items():
        if not isinstance(run, LoadedRun):
            lines.append(f"| {model_name(m)} | not trained: `{run}` | | | | | | | | |")
            continue
        s = run.summary
        err = s.get("test_error")
        lines.append(f"| {model_name(m)} | `{Path(s['run_dir']).name}` | {s.get('seed')} | {s.get('arch')} | "
                     f"{s.get('epochs')} | {num(None if err is None else 100 * err, '{:.2f}')} | "
                     f"{run.threshold:.4f} ({run.fpr:g}) | {s.get('config_hash')} | {run.model_hash} | "
                     f"`{run.checkpoint}` |")
    return lines


def footer(rows: list[dict], device: str) -> list[str]:
    done = [r for r in rows if r["wall_time_s"] is not None]
    wall = sum(r["wall_time_s"] for r in done)
    devs = sorted({r["device"] for r in done if r["device"]})
    # what the result files recorded, never this invocation's machine: the report is rewritten from the
    # committed results on any machine and must come out the same (only the generation line differs)
    torch_versions = sorted({r["torch_version"] for r in done if r.get("torch_version")})
    return ["", f"Attack wall time of the finished cells: {dur(wall)} in total (per cell above; summed over "
            f"chunks, resumes included), as recorded in their result files. Devices of the finished cells: "
            f"{', '.join(devs) or '-'}; torch {', '.join(torch_versions) or '-'}.",
            generation_line()]


def header(title: str, command: str, dataset: str, scale: str, table: str, rows: list[dict], betas=None) -> list[str]:
    n_done = sum(r["status"] == "complete" for r in rows)
    red = reductions(dataset, scale, table, betas)
    lines = [f"# {title}", "",
             f"Generated by `{recipe_env_prefix()}{command}` (resumable; `--only-report` rewrites this file from the result files that "
             f"exist). Scale `{scale}`: {n_done}/{len(rows)} cells complete"
             + ("" if n_done == len(rows) else "; the others are shown as *pending*, never as numbers") + ".", ""]
    if red:
        lines += ["**Differs from the paper's settings** (Appendix C) here:", ""] + [f"- {x}" for x in red]
    else:
        lines += ["Settings: the paper's (Appendix C), on N = 1000 test images."]
    lines += ["", "Rates in % of all N attacked test images (Section 4.3): success S = f(x') = target (targeted) or "
              "!= label (untargeted); undetected R = successful and d(x') <= threshold (95th percentile of the "
              "validation distances, 5% FPR). 95% Wilson intervals in brackets. Best-iterate undetected: some "
              "iterate (not only the last) was successful and undetected. `diff` = ours - paper, in points.", ""]
    return lines
