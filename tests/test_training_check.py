"""The training fast path: ``train.compile`` trains through a compiled forward without changing what a
run is (same config hash, eager checkpoint keys), and ``training-check`` compares it with eager fp32."""
import torch

from lit_caps.config import compose, config_hash
from lit_caps.training_check import training_check

TINY = ("train.limit_train_batches=3", "train.limit_val_batches=2", "train.checkpoint_every_n_steps=50",
        "progress_bar=false", "data.num_workers=0")


def test_compile_is_not_part_of_a_runs_identity():
    a = compose("capsnet", "mnist", overrides=["train.compile=false"])
    b = compose("capsnet", "mnist", overrides=["train.compile=true"])
    assert config_hash(a) == config_hash(b)
    # bf16 training changes the arithmetic of every step: another model
    c = compose("capsnet", "mnist", overrides=["train.precision=bf16-mixed"])
    assert config_hash(c) != config_hash(a)


def test_training_check_trains_both_paths_and_reports(tmp_path, data_root):
    rows = training_check(("eager fp32", "compiled fp32"), (0,), epochs=1, runs_root=tmp_path / "runs",
                          report_dir=tmp_path, data_root=str(data_root), overrides=TINY + (f"data.root={data_root}",))
    assert [r["path"] for r in rows] == ["eager fp32", "compiled fp32"]
    assert all(r["status"] == "complete" for r in rows)
    assert rows[1]["inside_eager_ci"] in (True, False) and rows[1]["speedup_vs_eager"] > 0
    text = (tmp_path / "training_check.md").read_text()
    assert "| compiled fp32 | 0 |" in text and "**Verdict:** compiled fp32:" in text
    # the compiled run's checkpoint holds the eager model's parameter names (loads into an eager model)
    ck = torch.load(next((tmp_path / "runs" / "training_check" / "compiled_fp32").rglob("last.ckpt")),
                    map_location="cpu", weights_only=False)
    assert not any("_orig_mod" in k for k in ck["state_dict"]) and "model.conv.weight" in ck["state_dict"]
    # the report is rewritten from the finished runs without training
    again = training_check(("eager fp32", "compiled fp32"), (0,), epochs=1, runs_root=tmp_path / "runs",
                           report_dir=tmp_path, only_report=True, overrides=TINY)
    assert [r["val_error_pct"] for r in again] == [r["val_error_pct"] for r in rows]
