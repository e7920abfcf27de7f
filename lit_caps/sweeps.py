"""Run W&B sweep YAML files locally, without a W&B server.

With a server the same file runs as ``wandb sweep sweeps/x.yaml`` then ``wandb agent ENTITY/PROJECT/ID``;
the server's controller picks the parameters and the agent starts the ``command``. On air-gapped
machines ``lit-caps sweep local sweeps/x.yaml`` plays both parts: it expands the ``grid`` or
``random`` search here (``bayes`` needs the server) and runs each command one after another.

Commands use W&B's macros, substituted as a W&B agent does (whole argv items only; default command
``["${env}", "${interpreter}", "${program}", "${args}"]``): ``${env}`` -> ``/usr/bin/env``,
``${interpreter}`` -> this Python (W&B: ``python``), ``${program}``, ``${args}`` -> ``--key=value`` per
parameter, ``${args_no_hyphens}`` -> ``key=value``, ``${args_no_equals}`` -> ``--key value``,
``${args_no_boolean_flags}``, ``${args_append_hydra}`` / ``${args_override_hydra}`` (``+key=value`` /
``++key=value``), ``${args_json}`` -> one JSON item, ``${args_json_file}`` -> the path of a JSON file of
the parameters; ``${envvar:NAME}`` inside any item -> ``$NAME``. Values are written as ``str(v)``.

State (resumable): ``results/sweeps/<sweep name>/`` holds a copy of the YAML and one folder per run,
``run-<index>-<hash of params>/`` with ``params.json``, ``command.json``, ``log.txt``, ``status.json``
and the ``metrics.json`` the program may write to ``$LIT_CAPS_SWEEP_METRICS``. Runs whose status says
rc 0 are skipped on a rerun; failed ones are retried. Each run gets ``WANDB_MODE`` (offline unless the
user has an API key), ``WANDB_RUN_GROUP=<sweep name>`` and ``WANDB_JOB_TYPE=sweep``, never a
``WANDB_SWEEP_ID``. Offline W&B runs land under ``wandb/`` in the program's working directory (unless
the program sets ``dir=``); upload them later with ``wandb sync wandb/offline-run-*``.
"""
from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import math
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .io import write_json_atomic, write_text_atomic
from .tracking import wandb_mode

METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("uniform", "q_uniform", "int_uniform", "log_uniform_values", "categorical", "constant")
PARAM_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "q"}
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
MACROS = {"env", "interpreter", "program", "args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags",
          "args_append_hydra", "args_override_hydra", "args_json", "args_json_file"}
_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------------------------------------- loading
def _param_spec(path: Path, name: str, spec: Any) -> dict:
    """Validate one parameter and return it with its ``distribution`` made explicit (W&B's inference)."""
    def bad(msg: str) -> ValueError:
        return ValueError(f"{path}: parameter {name!r}: {msg}")

    if not isinstance(spec, dict):
        raise bad(f"must be a mapping such as {{value: ...}} or {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        raise bad("nested parameters are not supported by the local runner")
    if unknown := set(spec) - PARAM_KEYS:
        raise bad(f"unknown keys {sorted(unknown)} (allowed: {sorted(PARAM_KEYS)})")
    spec = dict(spec)
    dist = spec.get("distribution")
    if dist is None:
        if "value" in spec:
            dist = "constant"
        elif "values" in spec:
            dist = "categorical"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise bad("needs `value`, `values`, `min`/`max` or a `distribution`")
    if dist not in DISTRIBUTIONS:
        raise bad(f"distribution {dist!r} is not one of {', '.join(DISTRIBUTIONS)}")
    spec["distribution"] = dist
    if dist == "constant" and "value" not in spec:
        raise bad("distribution constant needs `value`")
    if dist == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise bad("`values` must be a non-empty list")
        probs = spec.get("probabilities")
        if probs is not None and (not isinstance(probs, list) or len(probs) != len(values)
                                  or any(not isinstance(p, (int, float)) or p < 0 for p in probs)
                                  or abs(sum(probs) - 1) > 1e-6):
            raise bad("`probabilities` must be one non-negative number per value, summing to 1")
    elif "probabilities" in spec:
        raise bad("`probabilities` only goes with `values`")
    if dist in ("uniform", "q_uniform", "int_uniform", "log_uniform_values"):
        lo, hi = spec.get("min"), spec.get("max")
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in (lo, hi)) or lo > hi:
            raise bad(f"{dist} needs numbers min <= max, got min={lo!r} max={hi!r}")
        if dist == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
            raise bad("int_uniform needs integer min and max")
        if dist == "log_uniform_values" and lo <= 0:
            raise bad("log_uniform_values needs min > 0")
        q = spec.setdefault("q", 1) if dist == "q_uniform" else None
        if dist == "q_uniform" and (not isinstance(q, (int, float)) or q <= 0):
            raise bad(f"q must be a positive number, got {q!r}")
    return spec


def load_sweep(path: str | os.PathLike) -> dict:
    """Read and validate a W&B sweep YAML; parameters come back with an explicit ``distribution``."""
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(sweep, dict):
        raise ValueError(f"{path}: a sweep file must be a YAML mapping")
    if sweep.get("method") not in METHODS:
        raise ValueError(f"{path}: `method` must be one of {', '.join(METHODS)}, got {sweep.get('method')!r}")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ValueError(f"{path}: `parameters` must be a non-empty mapping")
    sweep["parameters"] = {str(k): _param_spec(path, str(k), v) for k, v in params.items()}
    metric = sweep.get("metric")
    if metric is not None:
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            raise ValueError(f"{path}: `metric` must be {{name: ..., goal: maximize|minimize}}")
        if metric.setdefault("goal", "minimize") not in ("maximize", "minimize"):
            raise ValueError(f"{path}: metric goal must be maximize or minimize, got {metric['goal']!r}")
    command = sweep.setdefault("command", list(DEFAULT_COMMAND))
    if not isinstance(command, list) or not command:
        raise ValueError(f"{path}: `command` must be a non-empty list of argv items")
    for item in map(str, command):
        macro = item[2:-1] if item.startswith("${") and item.endswith("}") else None
        if macro is not None and not macro.startswith("envvar:") and macro not in MACROS:
            raise ValueError(f"{path}: unknown command macro {item} (known: {', '.join(sorted(MACROS))})")
    cap = sweep.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ValueError(f"{path}: run_cap must be a positive integer")
    sweep.setdefault("name", path.stem)
    return sweep


# -------------------------------------------------------------------------------------------- expansion
def _grid_values(name: str, spec: dict) -> list:
    dist = spec["distribution"]
    if dist == "constant":
        return [spec["value"]]
    if dist == "categorical":
        return list(spec["values"])
    if dist == "int_uniform":
        return list(range(spec["min"], spec["max"] + 1))
    raise ValueError(f"grid search cannot enumerate parameter {name!r} (distribution {dist}); "
                     f"use `values: [...]` or method: random")


def _draw(spec: dict, rng: random.Random) -> Any:
    dist, lo, hi = spec["distribution"], spec.get("min"), spec.get("max")
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    q = spec["q"]  # q_uniform: a multiple of q, as an int when q is one
    v = round(rng.uniform(lo, hi) / q) * q
    return int(v) if isinstance(q, int) else round(v, 12)


def expand(sweep: dict, count: int | None = None, seed: int = 0) -> list[dict]:
    """The runs' parameter dicts (YAML key order). ``count`` defaults to the sweep's ``run_cap``."""
    count = count if count is not None else sweep.get("run_cap")
    if count is not None and count < 1:
        raise ValueError(f"count must be a positive number of runs, got {count}")
    params = sweep["parameters"]
    if sweep["method"] == "bayes":
        raise ValueError("method bayes needs a W&B server (`wandb sweep` + `wandb agent`): the local runner does "
                         "grid and random only. For the R-PGD beta study, `lit-caps reproduce table3` refines the "
                         "worst beta itself.")
    if sweep["method"] == "grid":
        grid = [_grid_values(k, s) for k, s in params.items()]
        runs = [dict(zip(params, combo)) for combo in itertools.product(*grid)]
        return runs[:count] if count is not None else runs
    if count is None:
        raise ValueError("method random needs a number of runs: --count N (or run_cap in the YAML)")
    rng = random.Random(seed)
    return [{k: _draw(s, rng) for k, s in params.items()} for _ in range(count)]


# ---------------------------------------------------------------------------------------------- command
def build_command(sweep: dict, params: dict, run_dir: str | os.PathLike | None = None, *,
                  write_json: bool = True) -> list[str]:
    """argv of one run, W&B's macros substituted. ``${args_json_file}`` is ``<run_dir>/params.json``
    (a temp file without ``run_dir``), written unless ``write_json`` is false."""
    command = [_ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(c))
               for c in sweep.get("command") or DEFAULT_COMMAND]
    flags = [f"{k}={v}" for k, v in params.items()]
    macros: dict[str, list[str]] = {
        "env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [str(sweep.get("program"))],
        "args": ["--" + f for f in flags], "args_no_hyphens": flags,
        "args_no_equals": [x for k, v in params.items() for x in (f"--{k}", str(v))],
        "args_no_boolean_flags": [f"--{k}" if isinstance(v, bool) else f"--{k}={v}"
                                  for k, v in params.items() if v is not False],
        "args_append_hydra": ["+" + f for f in flags], "args_override_hydra": ["++" + f for f in flags],
        "args_json": [json.dumps(params)],
    }
    if "${program}" in command and not sweep.get("program"):
        raise ValueError(f"sweep {sweep.get('name')!r}: the command uses ${{program}} but `program` is not set")
    if "${args_json_file}" in command:
        if run_dir is not None:
            json_file = Path(run_dir) / "params.json"
        else:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="sweep-params-", suffix=".json")
            os.close(fd)
            json_file = Path(name)
        if write_json:
            write_json_atomic(json_file, params, sort_keys=False)
        macros["args_json_file"] = [str(json_file)]
    out: list[str] = []
    for c in command:
        out += macros.get(c[2:-1], [c]) if c.startswith("${") and c.endswith("}") else [c]
    return out


# ------------------------------------------------------------------------------------------------ state
def run_id(index: int, params: dict) -> str:
    """Deterministic id: the run's index in the expanded list and a hash of its parameters."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return f"run-{index:04d}-{digest[:8]}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _store_yaml(sweep_path: Path, state_dir: Path) -> None:
    """Keep a copy of the sweep file; a differing older copy stays, the new one goes beside it."""
    text, copy = sweep_path.read_text(), state_dir / "sweep.yaml"
    if not copy.exists():
        write_text_atomic(copy, text)
    elif copy.read_text() != text:
        new = state_dir / f"sweep-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
        write_text_atomic(new, text)
        print(f"[sweep] note: {sweep_path} differs from {copy}; stored this version as {new.name} "
              f"(changed parameters give new run ids, old runs are kept, not mixed in)")


def _execute(cmd: list[str], env: dict, log_path: Path) -> int:
    """Run ``cmd``, streaming its merged stdout/stderr to the console and appending it to ``log_path``."""
    with open(log_path, "ab") as log:
        log.write(f"\n=== {datetime.now(timezone.utc).isoformat()} $ {shlex.join(cmd)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as e:  # e.g. the program is not on PATH: a failed run, like a shell's 127
            msg = f"[sweep] cannot start {cmd[0]!r}: {e}\n"
            log.write(msg.encode())
            sys.stdout.write(msg)
            return 127
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
                log.flush()
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
        except BaseException:  # Ctrl-C: stop the run too; no status is written, so it is retried
            proc.terminate()
            raise
        finally:
            rc = proc.wait()
            proc.stdout.close()
    return rc


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def run_local(sweep_path: str | os.PathLike, *, count: int | None = None, seed: int = 0,
              shard: tuple[int, int] = (0, 1), state_dir: str | os.PathLike | None = None,
              dry_run: bool = False, env: dict[str, str] | None = None) -> list[dict]:
    """Run this shard's runs of a grid/random sweep one after another (see the module docstring).

    Returns one record per run: index, run_id, params, rc, metrics, skipped, run_dir (and command).
    """
    sweep_path = Path(sweep_path)
    sweep = load_sweep(sweep_path)
    name, (shard_i, n_shards) = sweep["name"], shard
    if not 0 <= shard_i < n_shards:
        raise ValueError(f"shard {shard_i}/{n_shards}: need 0 <= I < N")
    runs = [(i, p) for i, p in enumerate(expand(sweep, count, seed)) if i % n_shards == shard_i]
    state = Path(state_dir) if state_dir is not None else Path("results") / "sweeps" / name
    metric = (sweep.get("metric") or {}).get("name")
    if not dry_run:
        state.mkdir(parents=True, exist_ok=True)
        _store_yaml(sweep_path, state)
    base_env = {**os.environ, **(env or {})}
    base_env.pop("WANDB_SWEEP_ID", None)  # wandb would contact the server for it
    base_env.update(WANDB_MODE=(env or {}).get("WANDB_MODE") or wandb_mode(), WANDB_RUN_GROUP=str(name),
                    WANDB_JOB_TYPE="sweep", PYTHONUNBUFFERED="1",
                    PATH=os.pathsep.join([str(Path(sys.executable).parent), base_env.get("PATH", "")]))
    records = []
    for k, (i, params) in enumerate(runs, 1):
        rid = run_id(i, params)
        run_dir = state / rid
        cmd = build_command(sweep, params, run_dir, write_json=not dry_run)
        rec = {"index": i, "run_id": rid, "params": params, "rc": None, "metrics": {}, "skipped": False,
               "run_dir": str(run_dir), "command": cmd}
        records.append(rec)
        head = f"[sweep {name} {k}/{len(runs)}] {format_params(params)}"
        status = _read_json(run_dir / "status.json")
        if status and status.get("rc") == 0:
            rec.update(rc=0, skipped=True, metrics=_read_json(run_dir / "metrics.json") or {})
            print(f"{head} ... done, skipped", flush=True)
            continue
        print(f"{head} ... {'(dry run) ' if dry_run else ''}$ {shlex.join(cmd)}", flush=True)
        if dry_run:
            continue
        write_json_atomic(run_dir / "params.json", params, sort_keys=False)
        write_json_atomic(run_dir / "command.json", cmd)
        (run_dir / "metrics.json").unlink(missing_ok=True)  # a failed try's metrics never count
        started, t0 = datetime.now(timezone.utc).isoformat(), time.monotonic()
        rc = _execute(cmd, {**base_env, "LIT_CAPS_SWEEP_METRICS": str((run_dir / "metrics.json").resolve())},
                      run_dir / "log.txt")
        write_json_atomic(run_dir / "status.json", {
            "rc": rc, "wall_time_s": round(time.monotonic() - t0, 3), "started": started,
            "finished": datetime.now(timezone.utc).isoformat(), "host": socket.gethostname(), "run_id": rid})
        rec.update(rc=rc, metrics=_read_json(run_dir / "metrics.json") or {})
        print(f"{head} ... rc {rc}", flush=True)
    if not dry_run:
        _summary(name, records, metric, (sweep.get("metric") or {}).get("goal", "minimize"))
    return records


def best_run(records: list[dict], metric: str | None, goal: str = "minimize") -> dict | None:
    """The successful record with the best numeric ``metrics[metric]`` (None if there is none)."""
    scored = [r for r in records if r["rc"] == 0 and isinstance(r["metrics"].get(metric), (int, float))]
    if not metric or not scored:
        return None
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda r: r["metrics"][metric])


def _summary(name: str, records: list[dict], metric: str | None, goal: str) -> None:
    import pandas as pd

    rows = [{"run_id": r["run_id"], **r["params"], "rc": r["rc"],
             **({metric: r["metrics"].get(metric)} if metric else {})} for r in records]
    print(f"\n[sweep {name}] summary ({len(records)} runs, "
          f"{sum(r['rc'] != 0 for r in records)} failed)\n{pd.DataFrame(rows).to_string(index=False)}")
    if best := best_run(records, metric, goal):
        print(f"[sweep {name}] best ({goal} {metric}): {best['run_id']} {format_params(best['params'])} "
              f"-> {best['metrics'][metric]}")


def collect(state_dir: str | os.PathLike):
    """A pandas DataFrame of every run folder under ``state_dir``: run_id, params, rc, wall_time_s, metrics."""
    import pandas as pd

    state = Path(state_dir)
    if not state.is_dir():
        raise FileNotFoundError(f"no sweep state folder at {state}")
    rows = []
    for run_dir in sorted(p for p in state.glob("run-*") if (p / "params.json").is_file()):
        params, status = _read_json(run_dir / "params.json") or {}, _read_json(run_dir / "status.json") or {}
        row = {"run_id": run_dir.name, **params, "rc": status.get("rc"), "wall_time_s": status.get("wall_time_s")}
        for key, v in (_read_json(run_dir / "metrics.json") or {}).items():
            row[f"metrics.{key}" if key in row else key] = v
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "rc", "wall_time_s"])
