"""Markdown report pieces: number formats, the generation line, and the report writer.

Every report is a Markdown file and a CSV of the same rows, written atomically. The one line that
says when a report was generated starts with :data:`GENERATION_PREFIX`: it is the only line allowed
to differ when a report is rewritten from the committed store (``make check-reports`` ignores it).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..io import write_text_atomic

GENERATION_PREFIX = "Report written "


def hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def dur(seconds: float) -> str:
    """A wall time: seconds below a minute, else h/m/s."""
    return f"{seconds:.1f}s" if seconds < 60 else hms(seconds)


def generation_line(took_s: float | None = None) -> str:
    took = "" if took_s is None else f" in {hms(took_s) if took_s >= 60 else f'{took_s:.1f}s'}"
    return f"{GENERATION_PREFIX}{time.strftime('%Y-%m-%d %H:%M:%S %z')}{took}."


def pct(v, nd=1):
    """A rate in [0, 1] as a percentage rounded to ``nd`` decimals (None stays None)."""
    return None if v is None else round(100 * float(v), nd)


def num(v, fmt="{:.1f}") -> str:
    return "" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)


def diff(v) -> str:
    return "" if v is None else f"{v:+.1f}"


def ci(row, k) -> str:
    """``<k>_pct [lo, hi]`` of a result row, or the row's status when it has no number."""
    if row[f"{k}_pct"] is None:
        return row["status"]
    return f"{row[f'{k}_pct']:.1f} [{row[f'{k}_ci_lo']:.1f}, {row[f'{k}_ci_hi']:.1f}]"


def pair(row) -> str:
    """``success/undetected`` (%) of a result row, or ``pending``."""
    if row["success_pct"] is None:
        return "pending"
    return f"{row['success_pct']:.1f}/{row['undetected_pct']:.1f}"


def paper_pair(row) -> str:
    if row["paper_success_pct"] is None:
        return "-"
    return f"{row['paper_success_pct']:g}/{row['paper_undetected_pct']:g}"


def write_report(report_dir, stem: str, rows: list[dict], md_lines: list[str]) -> pd.DataFrame:
    """``<report_dir>/<stem>.csv`` (the rows) and ``<stem>.md`` (the lines), atomically; the rows as a frame."""
    out = Path(report_dir)
    df = pd.DataFrame(rows)
    write_text_atomic(out / f"{stem}.csv", df.to_csv(index=False))
    write_text_atomic(out / f"{stem}.md", "\n".join(md_lines) + "\n")
    return df
