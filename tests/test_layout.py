"""The package's import graph: one-way layers, no import circle, nothing imports the CLI, no private
name used across modules, and the CLI / Makefile in step with the experiment registry.

The graph is read from the source (``ast``), every import counted wherever it sits (a function-level
import is still an edge), so a circle cannot hide inside a function.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lit_caps"

#: The layers, lowest first; a module may import only modules of a lower layer, or of its own package
#: (siblings inside one package, e.g. ``experiments.table3`` -> ``experiments.cells``). New modules
#: must be placed here (the test fails on an unplaced one). The rule of the architecture: cli ->
#: experiments -> {runs, evaluation, store} -> training -> {models, attacks, detection, data} ->
#: {config, io, names}; tracking and reporting sit low because training logs to W&B and draws its
#: curves.
LAYERS = [
    ("errors", "names"),
    ("io",),
    ("config_schema",),
    ("config",),
    ("tracking", "reporting"),
    ("models", "detection", "data"),
    ("validate",),
    ("attacks",),
    ("training",),
    ("evaluation",),
    ("store",),
    ("runs", "trust"),
    ("bench_reference", "cost"),
    ("bench", "sweeps", "fastpath", "training_check"),
    ("gpu_check",),
    ("experiments",),
    ("store_commands", "sweep_commands", "bench_commands"),
    ("cli",),
]


def layer_of(mod: str) -> tuple[int, str]:
    """(layer, top-level part) of ``lit_caps.<top>[.<sub>...]``."""
    top = mod.split(".")[1]
    for k, names in enumerate(LAYERS):
        if top in names:
            return k, top
    raise AssertionError(f"module {mod} has no layer in tests/test_layout.py::LAYERS; place it there")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = modules()


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every lit_caps import in ``mod``."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("lit_caps"):
                    out.append((a.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, is_pkg, node)
            if not target.startswith("lit_caps"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:  # `from . import experiments`: the submodule itself
                    out.append((sub, None, node.lineno))
                else:
                    out.append((target, a.name, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    g = {}
    for m in MODULES:
        g[m] = {t for t, _, _ in imports(m) if t in MODULES and t != m}
    return g


def _sccs(g: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert _sccs(graph()) == [], "import circle(s): " + "; ".join(" <-> ".join(c) for c in _sccs(graph()))


def test_nothing_imports_the_cli():
    bad = [f"{m} (line {line})" for m in MODULES for t, _, line in imports(m) if t == "lit_caps.cli" and m != "lit_caps.cli"]
    assert not bad, f"the CLI is the top of the graph; these import it: {bad}"


def test_imports_point_down_the_layers():
    bad = []
    for m in MODULES:
        if m == "lit_caps":
            continue  # the package's (empty) __init__
        lm, top = layer_of(m)
        for t, _, line in imports(m):
            if t not in MODULES or t == "lit_caps":
                continue
            lt, ttop = layer_of(t)
            if ttop == top:
                continue  # inside one package (or the module itself)
            if lt >= lm:
                bad.append(f"{m}:{line} imports {t} (layer {lm} -> {lt})")
    assert not bad, "imports must point to a lower layer:\n" + "\n".join(bad)


def test_no_private_name_across_modules():
    bad = []
    for m, path in MODULES.items():
        for t, name, line in imports(m):
            if name and name.startswith("_") and not name.startswith("__") and t != m:
                bad.append(f"{m}:{line} imports {t}.{name}")
        # attribute access on an imported lit_caps module: `ex._model_name`
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(m, path.name == "__init__.py", node)
                for a in node.names:
                    if f"{target}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("lit_caps") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "a name another module uses is public:\n" + "\n".join(bad)


#: Function-level imports of lit_caps modules allowed, with the reason (everything else sits at
#: module level, so the graph is what the top of each file says).
LAZY_OK = {
    "lit_caps.cli": "the CLI imports a command's layer when that command runs (`--help` and argument "
                    "errors stay fast, without torch)",
    "lit_caps.bench_commands": "as the CLI: a measurement's module (torch) is imported when it runs",
    "lit_caps.data.datamodule": "the corruptions (scipy, scikit-image) are imported only for MNIST-C",
}


def test_internal_imports_sit_at_module_level():
    bad = []
    for m, path in MODULES.items():
        if m in LAZY_OK:
            continue
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                if isinstance(node, ast.ImportFrom):
                    target = _resolve(m, path.name == "__init__.py", node)
                else:
                    target = node.names[0].name
                if target.startswith("lit_caps"):
                    bad.append(f"{m}:{node.lineno} imports {target} inside a function")
    assert not bad, "internal imports go at module level:\n" + "\n".join(bad)


def test_only_tracking_imports_wandb():
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "wandb" or n.startswith("wandb.") for n in names) and m != "lit_caps.tracking":
                bad.append(f"{m}:{node.lineno}")
    assert not bad, f"wandb is imported only in lit_caps/tracking.py: {bad}"


def test_module_sizes():
    """No module over 400 lines (corruptions.py excepted: one function per corruption of MNIST-C)."""
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400
           and not m.endswith("corruptions")}
    assert not big, f"modules over 400 lines: {big}"


def test_the_checker_sees_a_circle_and_a_private_name(tmp_path, monkeypatch):
    """The checks above can fail: a two-module circle and a private import are found."""
    g = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _sccs(g) == [["a", "b"]]
    src = "from .experiments import _hidden\n"
    tree = ast.parse(src)
    node = tree.body[0]
    assert _resolve("lit_caps.cli", False, node) == "lit_caps.experiments"
    assert node.names[0].name.startswith("_")


def test_cli_and_makefile_follow_the_registry():
    from lit_caps.cli import build_parser
    from lit_caps.experiments import REGISTRY

    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "cmd")
    choices = next(a for a in sub.choices["reproduce"]._actions if a.dest == "what").choices
    assert sorted(choices) == sorted(REGISTRY)
    make = (ROOT / "Makefile").read_text()
    for name, exp in REGISTRY.items():
        target = exp.make_target
        assert re.search(rf"^([\w.-]+ )*{re.escape(target)}( [\w.-]+)*:", make, re.M), \
            f"Makefile has no target {target} for {name}"
        assert f"reproduce {name}" in make, f"the Makefile never calls `lit-caps reproduce {name}`"
