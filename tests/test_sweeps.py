"""The local W&B sweep runner: YAML validation, grid/random expansion, W&B's command macros, and
end-to-end runs of tiny programs (state, resume, failures, shards, offline wandb)."""
from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from lit_caps.sweeps import build_command, collect, expand, load_sweep, run_local

REPO = Path(__file__).resolve().parents[1]


def write_yaml(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


GRID = """
    method: grid
    parameters:
      model: {values: [a, b]}
      beta: {values: [0, 0.5, 1]}
      data: {value: mnist}
"""


def test_grid_order_constants_and_count(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, GRID))
    runs = expand(sweep)
    assert len(runs) == 6
    assert [list(r) for r in runs] == [["model", "beta", "data"]] * 6
    assert [(r["model"], r["beta"]) for r in runs] == [("a", 0), ("a", 0.5), ("a", 1), ("b", 0), ("b", 0.5), ("b", 1)]
    assert all(r["data"] == "mnist" for r in runs)
    assert expand(sweep, count=4) == runs[:4]
    assert sweep["name"] == "s"


def test_grid_int_uniform_enumerates_and_continuous_raises(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, "method: grid\nparameters:\n  k: {min: 1, max: 3}\n"))
    assert expand(sweep) == [{"k": 1}, {"k": 2}, {"k": 3}]
    sweep = load_sweep(write_yaml(tmp_path, "method: grid\nparameters:\n  lr: {min: 0.1, max: 1.0}\n"))
    with pytest.raises(ValueError, match="lr"):
        expand(sweep)


def test_bayes_raises_with_advice(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, "method: bayes\nparameters:\n  x: {min: 0.0, max: 1.0}\n"))
    with pytest.raises(ValueError, match="grid and random") as e:
        expand(sweep, count=3)
    assert "wandb sweep" in str(e.value) and "reproduce table3" in str(e.value)


@pytest.mark.parametrize("params, match", [
    ("  x: 3\n", "x"),
    ("  x: {values: []}\n", "non-empty"),
    ("  x: {values: [1, 2], probabilities: [0.5]}\n", "probabilities"),
    ("  x: {distribution: normal, mu: 0, sigma: 1}\n", "unknown keys"),
    ("  x: {distribution: gamma}\n", "gamma"),
    ("  x: {min: 2, max: 1}\n", "min <= max"),
    ("  x: {valeus: [1]}\n", "valeus"),
    ("  x: {distribution: log_uniform_values, min: 0, max: 1}\n", "min > 0"),
])
def test_malformed_parameters_name_file_and_parameter(tmp_path, params, match):
    path = write_yaml(tmp_path, "method: random\nparameters:\n" + params)
    with pytest.raises(ValueError, match=match) as e:
        load_sweep(path)
    assert str(path) in str(e.value) and "'x'" in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("method: hyperband\nparameters: {x: {value: 1}}\n", "method"),
    ("method: grid\nparameters: [1]\n", "parameters"),
    ("method: grid\nparameters: {x: {value: 1}}\nmetric: {name: m, goal: up}\n", "goal"),
    ("method: grid\nparameters: {x: {value: 1}}\ncommand: python x.py\n", "command"),
    ("method: grid\nparameters: {x: {value: 1}}\ncommand: [python, '${argz}']\n", "argz"),
])
def test_malformed_sweeps(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_sweep(write_yaml(tmp_path, text))


def test_program_needed_only_by_the_default_command(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, "method: grid\nparameters: {x: {value: 1}}\n"))
    with pytest.raises(ValueError, match="program"):
        build_command(sweep, {"x": 1})


RANDOM = """
    method: random
    parameters:
      u: {min: 0.0, max: 2.0}
      q: {distribution: q_uniform, min: 0, max: 1, q: 0.25}
      qi: {distribution: q_uniform, min: 0, max: 100, q: 10}
      i: {min: -3, max: 3}
      lg: {distribution: log_uniform_values, min: 0.0001, max: 0.1}
      p: {values: [first, second], probabilities: [1, 0]}
      c: {distribution: categorical, values: [x, y, z]}
      k: {value: 7}
"""


def test_random_is_seeded_and_respects_distributions(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, RANDOM))
    with pytest.raises(ValueError, match="count"):
        expand(sweep)
    runs = expand(sweep, count=200, seed=3)
    assert runs == expand(sweep, count=200, seed=3) and runs != expand(sweep, count=200, seed=4)
    assert expand(sweep, count=5, seed=3) == runs[:5]
    assert list(runs[0]) == ["u", "q", "qi", "i", "lg", "p", "c", "k"]
    for r in runs:
        assert 0 <= r["u"] <= 2
        assert r["q"] in (0, 0.25, 0.5, 0.75, 1)
        assert isinstance(r["qi"], int) and r["qi"] % 10 == 0 and 0 <= r["qi"] <= 100
        assert isinstance(r["i"], int) and -3 <= r["i"] <= 3
        assert 1e-4 <= r["lg"] <= 0.1
        assert r["p"] == "first" and r["k"] == 7
    assert {r["i"] for r in runs} == set(range(-3, 4)) and {r["c"] for r in runs} == {"x", "y", "z"}
    logs = [math.log10(r["lg"]) for r in runs]
    assert sum(x < -2.5 for x in logs) > 50  # log-uniform: half the draws below 10^-2.5


def test_run_cap_is_the_default_count(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, "method: random\nrun_cap: 4\nparameters:\n  x: {min: 0, max: 9}\n"))
    assert len(expand(sweep)) == 4 and len(expand(sweep, count=2)) == 2
    with pytest.raises(ValueError, match="positive"):
        expand(sweep, count=0)


def test_build_command_macros(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path, """
        method: grid
        program: train.py
        parameters:
          targeted: {value: true}
          beta: {value: 0.45}
          model: {value: capsnet}
    """))
    params = expand(sweep)[0]
    assert build_command(sweep, params) == ["/usr/bin/env", sys.executable, "train.py",
                                            "--targeted=True", "--beta=0.45", "--model=capsnet"]
    sweep["command"] = ["lit-caps", "attack", "${args_no_hyphens}", "--x", "${args_json}", "${args_json_file}"]
    cmd = build_command(sweep, params, tmp_path / "run")
    assert cmd[:6] == ["lit-caps", "attack", "targeted=True", "beta=0.45", "model=capsnet", "--x"]
    assert json.loads(cmd[6]) == params
    assert cmd[7] == str(tmp_path / "run" / "params.json") and json.loads(Path(cmd[7]).read_text()) == params
    sweep["command"] = ["${interpreter}", "${args_no_equals}", "${args_override_hydra}"]
    assert build_command(sweep, {"a": 1})[:3] == [sys.executable, "--a", "1"]
    assert build_command(sweep, {"a": 1})[3] == "++a=1"


PROGRAM = """
    import json, os, sys
    assert os.environ["WANDB_MODE"] == "offline", os.environ.get("WANDB_MODE")
    assert os.environ["WANDB_JOB_TYPE"] == "sweep" and "WANDB_SWEEP_ID" not in os.environ
    x = float(next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--x=")))
    with open(os.path.join(os.path.dirname(__file__), "counter.txt"), "a") as f:
        f.write(f"{x}\\n")
    print("running", x, "group", os.environ["WANDB_RUN_GROUP"])
    if x == 2 and not os.path.exists(os.path.join(os.path.dirname(__file__), "fixed")):
        sys.exit(3)
    with open(os.environ["LIT_CAPS_SWEEP_METRICS"], "w") as f:
        json.dump({"score": x * 2}, f)
"""


@pytest.fixture
def tiny_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SWEEP_ID", "must-not-leak")
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    return write_yaml(tmp_path, f"""
        name: tiny
        method: grid
        program: {tmp_path / "prog.py"}
        metric: {{name: score, goal: maximize}}
        parameters:
          x: {{values: [1, 2, 3]}}
          tag: {{value: t}}
    """)


def counter(tmp_path: Path) -> list[str]:
    return (tmp_path / "counter.txt").read_text().split()


def test_run_local_end_to_end_resume_and_retry(tiny_sweep, tmp_path, capsys):
    records = run_local(tiny_sweep)
    state = tmp_path / "results" / "sweeps" / "tiny"
    assert [r["rc"] for r in records] == [0, 3, 0]
    assert [r["metrics"] for r in records] == [{"score": 2.0}, {}, {"score": 6.0}]
    out = capsys.readouterr().out
    assert "[sweep tiny 1/3] x=1 tag=t" in out and "running 1.0 group tiny" in out
    assert "best (maximize score): run-0002-" in out
    assert (state / "sweep.yaml").read_text() == tiny_sweep.read_text()
    run_dir = tmp_path / records[0]["run_dir"]
    assert run_dir.name.startswith("run-0000-") and run_dir.parent == state
    assert json.loads((run_dir / "params.json").read_text()) == {"x": 1, "tag": "t"}
    assert json.loads((run_dir / "command.json").read_text())[-2:] == ["--x=1", "--tag=t"]
    assert "running 1.0" in (run_dir / "log.txt").read_text()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["rc"] == 0 and status["wall_time_s"] >= 0 and status["host"] and status["finished"]
    assert json.loads((tmp_path / records[1]["run_dir"] / "status.json").read_text())["rc"] == 3

    # rerun: finished runs skipped, the failed one retried (and now succeeds)
    assert counter(tmp_path) == ["1.0", "2.0", "3.0"]
    (tmp_path / "fixed").touch()
    again = run_local(tiny_sweep)
    assert counter(tmp_path) == ["1.0", "2.0", "3.0", "2.0"]
    assert [r["skipped"] for r in again] == [True, False, True] and [r["rc"] for r in again] == [0, 0, 0]
    assert again[0]["metrics"] == {"score": 2.0} and again[1]["metrics"] == {"score": 4.0}
    assert "done, skipped" in capsys.readouterr().out
    assert (tmp_path / records[1]["run_dir"] / "log.txt").read_text().count("=== ") == 2

    df = collect(state)
    assert list(df["x"]) == [1, 2, 3] and list(df["rc"]) == [0, 0, 0] and list(df["score"]) == [2.0, 4.0, 6.0]

    # a changed YAML keeps the old copy and stores the new one beside it; new params -> new ids
    tiny_sweep.write_text(tiny_sweep.read_text().replace("[1, 2, 3]", "[1, 4]"))
    third = run_local(tiny_sweep)
    assert (state / "sweep.yaml").read_text() != tiny_sweep.read_text()
    assert len(list(state.glob("sweep-*.yaml"))) == 1 and "note" in capsys.readouterr().out
    assert third[0]["skipped"] and not third[1]["skipped"] and third[1]["run_id"] not in {r["run_id"] for r in records}


def test_dry_run_and_shards(tiny_sweep, tmp_path, capsys):
    records = run_local(tiny_sweep, dry_run=True)
    assert [r["rc"] for r in records] == [None] * 3 and not (tmp_path / "results").exists()
    assert not (tmp_path / "counter.txt").exists() and "(dry run)" in capsys.readouterr().out
    s0 = run_local(tiny_sweep, shard=(0, 2), dry_run=True)
    s1 = run_local(tiny_sweep, shard=(1, 2), dry_run=True)
    assert [r["index"] for r in s0] == [0, 2] and [r["index"] for r in s1] == [1]
    assert sorted(r["run_id"] for r in s0 + s1) == sorted(r["run_id"] for r in records)


def test_cli_expand_and_local_exit_code(tiny_sweep, tmp_path, capsys):
    import argparse

    from lit_caps.sweep_commands import add_parser

    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["sweep", "expand", str(tiny_sweep)])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[0].startswith("# run-0000-") and lines[1].endswith("--x=1 --tag=t")
    args = ap.parse_args(["sweep", "local", str(tiny_sweep), "--shard", "1/2", "--state-dir", str(tmp_path / "st")])
    assert args.shard == (1, 2) and args.func(args) == 1  # x=2 fails
    args = ap.parse_args(["sweep", "collect", str(tmp_path / "st")])
    assert args.func(args) == 0 and "run-0001-" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ap.parse_args(["sweep", "local", str(tiny_sweep), "--shard", "2/2"])


WANDB_PROGRAM = """
    import sys
    import wandb
    run = wandb.init(project="t", dir=sys.argv[1], settings=wandb.Settings(x_disable_stats=True))
    wandb.log({"score": 1})
    wandb.finish()
"""


def test_missing_program_is_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = write_yaml(tmp_path, "method: grid\ncommand: [no-such-program-xyz, '${args}']\nparameters: {x: {value: 1}}\n")
    assert [r["rc"] for r in run_local(sweep)] == [127]


def test_wandb_offline_run_under_the_runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key -> offline
    (tmp_path / "wb.py").write_text(textwrap.dedent(WANDB_PROGRAM))
    sweep = write_yaml(tmp_path, f"""
        method: grid
        command: ["${{interpreter}}", "{tmp_path / 'wb.py'}", "{tmp_path / 'out'}"]
        parameters:
          x: {{value: 1}}
    """)
    records = run_local(sweep)
    assert records[0]["rc"] == 0
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


def test_repo_sweep_files():
    files = sorted((REPO / "sweeps").glob("*.yaml")) + sorted((REPO / "sweeps").glob("*.yml"))
    if not files:
        pytest.skip("no sweep files in sweeps/ yet")
    for path in files:
        sweep = load_sweep(path)
        # the beta sweeps: the last iterate's rate (the paper's); the adaptive ones: the best iterate's
        metric = "best_undetected_rate" if path.stem.startswith("adaptive") else "undetected_rate"
        assert sweep.get("metric") == {"name": metric, "goal": "maximize"}, path
        if sweep["method"] == "bayes":
            continue
        runs = expand(sweep, count=None if sweep["method"] == "grid" else 3)
        assert runs, path
        for params in runs:
            cmd = build_command(sweep, params, write_json=False)
            cmd = cmd[1:] if cmd[0] == "/usr/bin/env" else cmd
            assert cmd[0] in ("lit-caps", sys.executable, "python"), (path, cmd)
