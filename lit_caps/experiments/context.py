"""What every experiment is run with: one :class:`Context` (where runs, results and reports live,
which models and seeds, what may be computed), and the :class:`Experiment` record of the registry."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..config import scale_section


@dataclass
class Context:
    """The settings of one ``lit-caps reproduce`` invocation, shared by every experiment.

    ``datasets`` None: the experiment's own default. ``only_report``: compute nothing, write the
    report from the result files that exist. ``train``: train (or resume) a missing model, else
    its cells are *pending*. ``betas`` / ``refine`` / ``targeted`` / ``source_seed``: the options of
    the experiments that take them (the beta grid, Table 3's refinement levels, R-PGD's targeting,
    Table 7's and Fig. 3's black-box substitute seed); None = the scale's.
    """

    scale: str = "quick"
    runs_root: str = "runs"
    out_dir: str = "results"
    report_dir: str = "reports"
    models: tuple = ("capsnet", "cnn_cr", "cnn_r")
    seed: int = 0
    attack_seed: int = 0
    only_report: bool = False
    train: bool = True
    device: str | None = None
    data_root: str | None = None
    progress: bool = False
    wandb: bool = True
    datasets: tuple | None = None
    betas: tuple | None = None
    refine: int | None = None
    targeted: tuple = (True, False)
    source_seed: int = 1

    def section(self, name: str) -> dict:
        """The scale's settings of an experiment (``configs/scales/<scale>.yaml``, section ``name``)."""
        return scale_section(self.scale, name)

    def datasets_or(self, default: tuple) -> tuple:
        return tuple(self.datasets) if self.datasets else tuple(default)


@dataclass(frozen=True)
class Experiment:
    """One paper table or figure: ``lit-caps reproduce <name>`` runs ``<module>.<function>(ctx,
    ctx.section(section))``. The module is imported when the experiment runs (:meth:`entry`), so the
    registry itself is light: the CLI builds its choices and help from it without importing torch."""

    name: str
    module: str  # under lit_caps.experiments
    section: str
    make_target: str
    datasets: tuple
    help: str
    fixed_data: bool = False  # runs on its own datasets only (``--data`` does not apply)
    checks_data: bool = True  # False: a dataset that cannot be loaded becomes rows that say why
    function: str = "run"

    def entry(self) -> Callable[[Context, dict], object]:
        return getattr(importlib.import_module(f"lit_caps.experiments.{self.module}"), self.function)

    def __call__(self, ctx: Context):
        """Run the experiment with ``ctx`` and its scale section."""
        return self.entry()(ctx, ctx.section(self.section))
