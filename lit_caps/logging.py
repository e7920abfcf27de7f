"""Loggers: CSV always (readable offline), W&B offline unless the user has an API key.

wandb without a key and without WANDB_MODE raises "No API key configured", and
``WandbLogger(offline=True)`` fails once wandb was set up earlier in the same process, so the mode
is decided here, before wandb starts, and passed as ``mode=``. A user with a key (WANDB_API_KEY
or ``wandb login``) gets online runs with no code change; WANDB_MODE always wins.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def wandb_mode() -> str:
    """WANDB_MODE if set, else online with an API key, else offline (the embedded default)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if has_wandb_key() else "offline"


def ensure_wandb_mode() -> str:
    """Set WANDB_MODE for this process (before wandb starts) and return it."""
    mode = wandb_mode()
    os.environ["WANDB_MODE"] = mode
    return mode


def make_loggers(cfg: dict, run_dir: Path, job_type: str = "fit") -> list:
    from lightning.pytorch.loggers import CSVLogger

    lcfg = cfg.get("logger", {})
    loggers = []
    if lcfg.get("csv", True):
        loggers.append(CSVLogger(str(run_dir), name="", version="csv"))
    if lcfg.get("wandb", True):
        from lightning.pytorch.loggers import WandbLogger

        mode = ensure_wandb_mode()
        run_id = run_dir.name if job_type == "fit" else f"{cfg['data']['name']}-{run_dir.name}-{job_type}"
        loggers.append(WandbLogger(project=lcfg.get("project", "lit_caps"), save_dir=str(run_dir),
                                   name=f"{cfg['data']['name']}/{run_dir.name}", id=run_id, resume="allow",
                                   mode=mode, config=cfg, group=cfg["data"]["name"], job_type=job_type))
    return loggers
