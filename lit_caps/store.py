"""The committed store: the results and the trained models behind the committed reports, kept in git.

``runs/`` and ``results/`` are working folders, ignored by git; a new machine (or a fresh clone)
starts without them. The store keeps what the reports need, compactly, beside the reports::

    <store>/results/<path under results/>.gz   every result file (gzip JSON, per-example outcomes)
    <store>/models/<dataset>/<run name>/       a model card per default model:
        model.pt       the evaluated weights (the weight average) + the detection state
                       (threshold, validation distances, FPR), loadable with ``weights_only=True``
        summary.json   the run's summary (test error, epochs, config hash, model hash, ...)
        config.yaml    the run's config (its hash names the folder, as under runs/)
        csv/metrics.csv  the training curves (the clean-error report reads them)

``<store>`` is ``$LIT_CAPS_STORE`` (default ``reports``, relative to the working directory, as
``runs/`` and ``results/`` are). Result files come back from the store into ``results/`` when an
experiment first asks for its results folder (:func:`restore_results`, never over a local file),
so ``--only-report`` on a fresh clone rewrites every report from the committed results. Models are
found by :func:`lit_caps.experiments.find_run` and ``ensure_run`` when no local run exists, and
their weights are checked against the recorded model hash on load.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

from .config import parse_overrides, set_dotted
from .errors import DamagedFileError
from .evaluation import model_hash
from .io import atomic_write
from .training.fit import build
from .training.module import LitReconstructionClassifier

ROOT_ENV = "LIT_CAPS_STORE"
MODEL_FORMAT = "lit_caps-model-card-1"
MODEL_FILE = "model.pt"
#: folders under results/ that are not results (chunks, superseded or damaged files, sweep state, W&B)
_SKIP_PARTS = {"superseded", "sweeps", "wandb", "figures", "evaluate"}


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "reports"))


def results_root() -> Path:
    return root() / "results"


def models_root() -> Path:
    return root() / "models"


def is_store_reports(report_dir) -> bool:
    """True when ``report_dir`` is the store's folder: only reports written there are backed by it."""
    try:
        return Path(report_dir).resolve() == root().resolve()
    except OSError:
        return False


# -- results ---------------------------------------------------------------------------------------------
def _result_files(out_root: Path):
    for p in sorted(out_root.rglob("*.json")):
        rel = p.relative_to(out_root)
        if any(part.startswith(".") or part in _SKIP_PARTS for part in rel.parts[:-1]) or p.name.startswith("."):
            continue
        yield p, rel


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same content, the same bytes


def save_results(out_root="results", store: Path | None = None) -> list[Path]:
    """Copy every result file under ``out_root`` into the store (gzip); returns the files written
    (those that were new or changed). Files are copied byte for byte, so a restored file is identical."""
    out_root, dest_root = Path(out_root), Path(store) if store is not None else results_root()
    written = []
    for p, rel in _result_files(out_root):
        data = p.read_bytes()
        try:
            json.loads(data)
        except ValueError:
            continue  # a torn or foreign file is never committed
        dest = dest_root / rel.with_name(rel.name + ".gz")
        if dest.is_file():
            try:
                if gzip.decompress(dest.read_bytes()) == data:
                    continue
            except (OSError, EOFError, gzip.BadGzipFile):
                pass
        blob = _gz(data)
        atomic_write(dest, lambda f: f.write(blob))
        written.append(dest)
    return written


def stored_results(store: Path | None = None):
    """(path under the results store without ``.gz``, parsed result) of every committed result file,
    in path order (the compute ledger reads them; nothing is restored)."""
    src_root = Path(store) if store is not None else results_root()
    for src in sorted(src_root.rglob("*.json.gz")):
        rel = src.relative_to(src_root)
        try:
            res = json.loads(gzip.decompress(src.read_bytes()))
        except (OSError, EOFError, ValueError, gzip.BadGzipFile) as e:
            raise DamagedFileError(f"{src} is damaged ({type(e).__name__}); restore it with "
                                   f"`git checkout -- {src}`") from None
        yield rel.with_name(rel.name[: -len(".gz")]), res


_RESTORED: set = set()


def restore_results(out_root="results", store: Path | None = None, *, quiet: bool = False) -> list[Path]:
    """Write every stored result that ``out_root`` lacks (never over a local file); once per process
    and folder. Returns the files restored."""
    out_root, src_root = Path(out_root), Path(store) if store is not None else results_root()
    key = (str(out_root.resolve()), str(src_root.resolve()))
    if key in _RESTORED or not src_root.is_dir():
        return []
    _RESTORED.add(key)
    restored = []
    for src in sorted(src_root.rglob("*.json.gz")):
        rel = src.relative_to(src_root)
        dest = out_root / rel.with_name(rel.name[: -len(".gz")])
        if dest.exists():
            continue
        try:
            data = gzip.decompress(src.read_bytes())
            json.loads(data)
        except (OSError, EOFError, ValueError, gzip.BadGzipFile) as e:
            raise DamagedFileError(f"{src} is damaged ({type(e).__name__}); restore it with "
                                   f"`git checkout -- {src}`") from None
        atomic_write(dest, lambda f, d=data: f.write(d))
        restored.append(dest)
    if restored and not quiet:
        print(f"[lit-caps] restored {len(restored)} result file(s) from the committed store {src_root} into "
              f"{out_root}", flush=True)
    return restored


def forget_restored() -> None:
    """Let :func:`restore_results` run again in this process (tests)."""
    _RESTORED.clear()


# -- models ----------------------------------------------------------------------------------------------
def save_model(run_dir, store: Path | None = None) -> Path:
    """Write the model card of a finished ``lit-caps fit`` run into the store; returns its folder."""
    import torch
    import yaml

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if not summary.get("complete"):
        raise ValueError(f"{run_dir} is not a finished run (summary.json: complete false)")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    ckpt_path = run_dir / "checkpoints" / Path(summary.get("checkpoint") or "last.ckpt").name
    module = LitReconstructionClassifier.load_from_checkpoint(str(ckpt_path), map_location="cpu")
    if module.threshold is None or module.val_distances is None:
        raise ValueError(f"{ckpt_path} holds no detection threshold")
    model = module.eval_model().eval()
    mh = model_hash(model)
    card = (Path(store) if store is not None else models_root()) / cfg["data"]["name"] / run_dir.name
    blob = {
        "format": MODEL_FORMAT,
        "state_dict": {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()},
        "threshold": float(module.threshold),
        "val_distances": module.val_distances.detach().cpu().clone(),
        "fpr": float(module.hparams.fpr),
        "model_hash": mh,
        "config_hash": summary["config_hash"],
    }
    atomic_write(card / MODEL_FILE, lambda f: torch.save(blob, f))
    s = {k: v for k, v in summary.items() if k not in ("run_dir", "summary_path", "last_checkpoint")}
    s.update(checkpoint=MODEL_FILE, model_hash=mh, source_run=run_dir.name)
    atomic_write(card / "summary.json", lambda f: f.write(json.dumps(s, indent=2, sort_keys=True).encode()))
    atomic_write(card / "config.yaml", lambda f: f.write(yaml.safe_dump(cfg, sort_keys=False).encode()))
    metrics = run_dir / "csv" / "metrics.csv"
    if metrics.is_file():
        (card / "csv").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics, card / "csv" / "metrics.csv")
    curves = run_dir / "training_curves.png"
    if curves.is_file():
        shutil.copyfile(curves, card / "training_curves.png")
    return card


def is_model_card(path) -> bool:
    return Path(path).name == MODEL_FILE


def load_model_card(model_file, data_overrides: list[str] | None = None):
    """(config, datamodule, module) of a model card, like ``lit_caps.runs.load_run`` for a checkpoint.
    The weights are the evaluated ones (the module's raw and averaged weights are both set to them);
    their hash is checked against the card's."""
    import torch
    import yaml

    model_file = Path(model_file)
    card = model_file.parent
    hint = f"restore it with `git checkout -- {card}`"
    try:
        blob = torch.load(model_file, map_location="cpu", weights_only=True)
        cfg = yaml.safe_load((card / "config.yaml").read_text())
    except FileNotFoundError:
        raise DamagedFileError(f"model card {card} is incomplete (model.pt or config.yaml missing); {hint}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is a damaged file here
        raise DamagedFileError(f"{model_file} is damaged ({type(e).__name__}); {hint}") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise DamagedFileError(f"{model_file} is not a lit_caps model card; {hint}")
    for k, v in parse_overrides(data_overrides or []):
        set_dotted(cfg, k, v)
    dm, module = build(cfg)
    module.model.load_state_dict(blob["state_dict"])
    if module.ema is not None:
        module.ema.load_state_dict(blob["state_dict"])
    module.threshold, module.val_distances = float(blob["threshold"]), blob["val_distances"]
    module.hparams.fpr = float(blob["fpr"])
    got = model_hash(module.eval_model())
    if got != blob["model_hash"]:
        raise DamagedFileError(f"{model_file}: the weights' hash {got} differs from the recorded {blob['model_hash']} "
                               f"(damaged or edited); {hint}")
    module.eval()
    return cfg, dm, module


def card_summaries(dataset: str, model: str, seed: int) -> list[tuple[Path, dict]]:
    """(summary path, summary) of every model card of (dataset, model, seed) in the store."""
    out = []
    for p in sorted((models_root() / dataset).glob(f"{model}-*-s{int(seed)}-*/summary.json")):
        try:
            s = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if s.get("model") == model and s.get("dataset") == dataset and int(s.get("seed", -1)) == int(seed) \
                and s.get("complete") and (p.parent / MODEL_FILE).is_file():
            out.append((p, s))
    return out


def card_for(run_name: str, dataset: str) -> Path | None:
    """The model card folder of a run name (``<model>-<arch>-s<seed>-<config hash>``), if stored."""
    card = models_root() / dataset / run_name
    return card if (card / "summary.json").is_file() and (card / MODEL_FILE).is_file() else None
