"""The paper's tables and figures, one module each, and the registry ``lit-caps reproduce NAME`` uses.

Every experiment module exposes ``run(ctx, sc)``: the :class:`Context` of the invocation and its
section of the scale (``lit_caps/configs/scales/<scale>.yaml``). Shared pieces: :mod:`.cells` (one
attack cell, the results folder, the scale's reductions), :mod:`.rows` (rows and Markdown tables of
cells), :mod:`.search` (the beta search of Table 3), :mod:`.diagnosis` (Fig. 4 and the galleries).
The CLI's ``reproduce`` choices and the Makefile's ``reproduce-*`` targets are checked against
:data:`REGISTRY` (tests/test_layout.py).
"""
from .context import Context, Experiment

TABLE3_DATASETS = ("mnist", "fashion_mnist", "svhn")

#: name -> Experiment, in the order of the paper.
REGISTRY: dict[str, Experiment] = {e.name: e for e in (
    Experiment("table1", "table1", "table1", "reproduce-table1", ("mnist",),
               "white-box FGSM / BIM / PGD / CW, targeted and untargeted (Table 1 / Table 5)"),
    Experiment("table2", "table2", "table2", "reproduce-table2", ("mnist",),
               "corrupted MNIST: error and undetected rates (Table 2, Fig. 7 / 8)", fixed_data=True),
    Experiment("table3", "table3", "table3", "reproduce-table3", TABLE3_DATASETS,
               "defense-aware R-PGD, worst case over beta (Table 3, Fig. 2, Fig. 9)", checks_data=False),
    Experiment("table4", "table4", "table3", "reproduce-table4", ("mnist", "fashion_mnist"),
               "clean test error of the default models (Table 4)"),
    Experiment("table6", "table3", "table3", "reproduce-table6", TABLE3_DATASETS,
               "R-FGSM, R-BIM and R-PGD, worst case over beta (Table 6)", checks_data=False,
               function="run_table6"),
    Experiment("rpgd-beta", "rpgd_beta", "rpgd_beta", "reproduce-table6-beta", ("mnist",),
               "R-PGD over the beta grid of one dataset (Fig. 9, Table 3 / 6 R-PGD, Fig. 2)"),
    Experiment("table7", "table7", "table7", "reproduce-table7", ("mnist",),
               "black-box PGD / R-PGD from a substitute trained with another seed (Table 7)"),
    Experiment("fig1", "fig1", "fig1", "reproduce-fig1", ("mnist",),
               "reconstruction distances, clean vs PGD (Fig. 1)"),
    Experiment("fig3", "fig3", "fig3", "reproduce-fig3", ("cifar10",),
               "CIFAR-10 CapsNet variants against R-PGD, white and black box (Fig. 3)", fixed_data=True),
    Experiment("fig4", "fig4", "fig4", "reproduce-fig4", ("fashion_mnist",),
               "class-pair success of targeted R-PGD (Fig. 4)"),
    Experiment("galleries", "galleries", "galleries", "reproduce-galleries", ("mnist", "fashion_mnist"),
               "successful undetected R-PGD examples (Fig. 5 / 11, Fig. 10)"),
    Experiment("adaptive", "adaptive", "adaptive", "reproduce-adaptive", ("mnist", "fashion_mnist"),
               "beyond the paper: adaptive attacks (Selective / Orthogonal PGD, APGD joint) and their ensemble"),
)}

__all__ = ["REGISTRY", "Context", "Experiment"]
