"""The paper's numbers (``lit_caps/paper/*.csv``, rates and errors in %), as the reports look them up."""
from __future__ import annotations

from importlib import resources

import pandas as pd


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables (lit_caps/paper/*.csv, values in %)."""
    return pd.read_csv(resources.files("lit_caps") / "paper" / f"{name}.csv")


def rates(name: str, dataset: str) -> dict:
    """(model, attack, targeted) -> (success %, undetected %) of one dataset in the paper's table ``name``."""
    df = paper_table(name)
    df = df[df["dataset"] == dataset]
    return {(r.model, r.attack, bool(r.targeted)): (float(r.success_rate), float(r.undetected_rate))
            for r in df.itertuples()}


def rates_all(name: str) -> dict:
    """(dataset, model, attack, targeted) -> (success %, undetected %) in the paper's table ``name``."""
    df = paper_table(name)
    return {(r.dataset, r.model, r.attack, bool(r.targeted)): (float(r.success_rate), float(r.undetected_rate))
            for r in df.itertuples()}
