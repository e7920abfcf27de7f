"""Model forwards for the evaluation: predictions with reconstruction distances (in batches), and
``torch.compile``d forwards (:func:`compiled_forward`, turned on by :func:`compile_requested`)."""
from __future__ import annotations

import contextlib
import os
import shutil

import torch
from torch import Tensor


@torch.no_grad()
def predict(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted class and reconstruction distance (from the predicted class) of one batch."""
    out = model(x)
    pred = out.logits.argmax(1)
    return pred, model.distance(x, out=out)


@torch.no_grad()
def predict_batched(model, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Predicted class and reconstruction distance (from the predicted class) of every image, in batches."""
    parts = [predict(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p for p, _ in parts]), torch.cat([d for _, d in parts])


#: Precisions of an attack's iterations: ``fp32``, or ``bf16`` autocast (the fast path: CapsNet's
#: routing runs ~1.5-1.8x faster on a CPU with AVX512-BF16, and on CUDA). Every reported number
#: (prediction, distance, success, undetected, on the final and the best iterate) is measured in fp32.
PRECISIONS = ("fp32", "bf16")


def precision_requested(precision: str | None = None, default: str = "fp32") -> str:
    """``precision`` if given, else ``LIT_CAPS_PRECISION``, else ``default``; one of :data:`PRECISIONS`."""
    p = precision if precision is not None else os.environ.get("LIT_CAPS_PRECISION", "").strip().lower() or default
    if p not in PRECISIONS:
        raise ValueError(f"precision {p!r}: choose one of {', '.join(PRECISIONS)} (LIT_CAPS_PRECISION)")
    return p


def attack_precision(precision: str, device) -> contextlib.AbstractContextManager:
    """The autocast context the attack's iterations run in (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compile_requested(compile: bool | None = None, default: bool = False) -> bool:
    """``compile`` if given, else the ``LIT_CAPS_COMPILE`` setting (``1``/``true``), else ``default``."""
    if compile is not None:
        return bool(compile)
    env = os.environ.get("LIT_CAPS_COMPILE")
    return bool(default) if env is None else env.strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def compiled_forward(models, enabled: bool = True, force: bool = False):
    """Run the models' ``forward`` through ``torch.compile`` inside the block (in place, restored after).

    Attacks call ``model(x)`` once or twice per iteration; compiling it fuses CapsNet's routing
    (measured: 1.37-1.38x faster at 2 threads, batch 128, in `make bench`; 1.5-1.9x on 1 thread, batch 100).
    The first call per input shape compiles (~35-50 s on this CPU); later calls, also in later
    blocks of the same process, reuse the compiled code. Gradients agree with eager mode to float
    rounding, so compiled and eager chunks are the same measurement (like CPU and GPU chunks: the
    device is recorded per chunk, not part of a result's identity). The reconstruction network is
    left eager (small). Needs a C++ compiler on the CPU (Inductor); ``LIT_CAPS_COMPILE=0`` turns it off.
    Only models whose ``compile_helps`` is True (CapsNet) are compiled unless ``force``; yields
    whether any model was.
    """
    models = [m for m in {id(m): m for m in models}.values() if getattr(m, "compile_helps", True) or force]
    if not enabled or not models:
        yield False
        return
    on_cpu = any(p.device.type == "cpu" for m in models for p in m.parameters())
    if on_cpu and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise RuntimeError("torch.compile on the CPU needs a C++ compiler (install g++, e.g. "
                           "`apt-get install g++`), or run without it: LIT_CAPS_COMPILE=0")
    saved = [getattr(m, "_compiled_call_impl", None) for m in models]
    for m in models:
        m.compile()
    try:
        yield True
    finally:
        for m, prev in zip(models, saved):
            m._compiled_call_impl = prev
