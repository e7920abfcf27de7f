"""``make bench``: throughput of each model and config, printed as a table.

Training (forward + backward + Adam step, images/s) and forward (no grad, images/s) at a fixed
batch size, on the CPU and on CUDA when present. Attack throughput (image-iterations/s) is added by
:func:`bench_attacks` once the attacks are available.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .attacks import build_attack
from .config import load_group
from .evaluation import attack_precision, compiled_forward
from .io import write_text_atomic
from .models import build_model, count_parameters, margin_loss


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timeit(fn, steps: int, device: str, warmup: int = 2) -> float:
    """Median seconds per call over ``steps`` timed calls (robust to other load on the machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_model(name: str, arch_name: str, device: str = "cpu", batch_size: int = 128, steps: int = 5) -> dict:
    arch = load_group("arch", arch_name)
    torch.manual_seed(0)
    model = build_model(name, **arch).to(device)
    x = torch.rand(batch_size, *arch["image_shape"], device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        out = model(x)
        cls = margin_loss(out.logits, y) if name.startswith("capsnet") else F.cross_entropy(out.logits, y)
        rec = model.reconstruct(out.poses, y)
        loss = cls + 0.0005 * (rec - x).flatten(1).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad():
            out = model(x)
            model.reconstruct(out.poses, out.logits.argmax(1))

    model.train()
    t_train = _timeit(train_step, steps, device)
    model.eval()
    t_fwd = _timeit(forward, steps, device)
    return {"device": device, "arch": arch_name, "model": name, "params": count_parameters(model),
            "batch": batch_size, "train_img_s": batch_size / t_train, "forward_img_s": batch_size / t_fwd}


def count_flops(fn) -> int:
    """Matmul and convolution FLOPs (forward and backward) of ``fn()``, with torch's own formulas.

    (``torch.utils.flop_counter.FlopCounterMode`` cannot be used around ``torch.autograd.grad``,
    which every attack calls; this counts the same ops without its module tracking.)
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **(kwargs or {}), out_val=out))
            return out

    counter = _Count()
    with counter:
        fn()
    return counter.total


def attack_flops_per_iteration(attack, x, y) -> float:
    """FLOPs of one iteration per image: the difference between a 3- and a 1-iteration run, / 2 / B
    (start and final check cancel)."""
    steps = attack.steps
    try:
        runs = []
        for n in (1, 3):
            attack.steps = n
            runs.append(count_flops(lambda: attack(x, y)))
    finally:
        attack.steps = steps
    return (runs[1] - runs[0]) / 2 / x.shape[0]


def bench_attacks(name: str, arch_name: str = "mnist", device: str = "cpu", batch_size: int = 128,
                  steps: int = 10, repeats: int = 3, compile: bool = False,
                  precisions: tuple = ("fp32",)) -> list[dict]:
    """Image-iterations/s of our PGD and R-PGD and torchattacks' PGD on the same model and batch
    (``steps`` iterations per call, median of ``repeats`` calls; no random start); with ``compile``
    also our PGD and R-PGD through ``torch.compile``d forwards (compilation in the warm-up, not timed);
    each of ``precisions`` (``bf16``: the attack under bf16 autocast, the evaluation's fast path)."""
    arch = load_group("arch", arch_name)
    torch.manual_seed(0)
    model = build_model(name, **arch).to(device).eval()
    x = torch.rand(batch_size, *arch["image_shape"], device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    rows = []
    for compiled in (False, True) if compile else (False,):
        # compiled: the same attacks with the forward through torch.compile (compiled in the warm-up)
        with compiled_forward([model], enabled=compiled, force=True):
            for prec in precisions:
                for attack in ("pgd", "r_pgd"):
                    kw = {"beta": 0.5} if attack == "r_pgd" else {}
                    atk = build_attack(attack, model, eps=0.3, step_size=0.01, steps=steps, random_start=False,
                                       **kw)

                    def call():
                        with attack_precision(prec, device):
                            atk(x, y)

                    t = _timeit(call, repeats, device, warmup=1)
                    flops = None if compiled or prec != "fp32" else \
                        attack_flops_per_iteration(atk, x[:8], y[:8]) / 1e6
                    label = attack + ("_compiled" if compiled else "") + ("" if prec == "fp32" else f"_{prec}")
                    rows.append({"device": device, "arch": arch_name, "model": name, "attack": label, "base": attack,
                                 "mode": ("compiled " if compiled else "eager ") + prec,
                                 "img_iter_s": batch_size * steps / t, "mflop_img_iter": flops})
    try:
        import torchattacks
    except Exception:  # noqa: BLE001 - optional dev dependency
        return rows

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, inp):
            return self.m(inp).logits

    ta = torchattacks.PGD(Logits(model), eps=0.3, alpha=0.01, steps=steps, random_start=False)
    t = _timeit(lambda: ta(x, y), repeats, device, warmup=1)
    rows.append({"device": device, "arch": arch_name, "model": name, "attack": "torchattacks_pgd",
                 "mode": "eager fp32", "img_iter_s": batch_size * steps / t, "mflop_img_iter": None})
    return rows


def format_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:,.0f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, "
          f"{args.steps} timed steps after 2 warm-up steps")
    rows = []
    for device in devices:
        for arch in args.archs:
            for model in args.models:
                rows.append(bench_model(model, arch, device, args.batch_size, args.steps))
                print(f"  {device} {arch:8s} {model:8s} train {rows[-1]['train_img_s']:8.0f} img/s  "
                      f"forward {rows[-1]['forward_img_s']:8.0f} img/s", flush=True)
    import platform

    header = (f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads "
              f"({platform.processor() or platform.machine()}), batch {args.batch_size}, {args.steps} timed steps "
              f"after 2 warm-up steps, fp32")
    out = [f"# `make bench`\n\n{header}\n", "## Model throughput (images/s)\n",
           format_table(rows, ["device", "arch", "model", "params", "batch", "train_img_s", "forward_img_s"])]
    print("\n" + "\n".join(out[1:]))
    if not args.no_attacks:
        arows = []
        for device in devices:
            for model in args.models:
                arows += bench_attacks(model, "mnist", device, args.batch_size, args.attack_steps,
                                       compile=getattr(args, "compile", False),
                                       precisions=tuple(getattr(args, "precisions", None) or ("fp32",)))
        by = {(r["device"], r["model"], r["attack"]): r for r in arows}
        for r in arows:
            pgd = by[(r["device"], r["model"], "pgd")]
            ref = by.get((r["device"], r["model"], r["attack"].replace("r_pgd", "pgd", 1)), pgd)
            r["vs_our_pgd"] = (f"{ref['img_iter_s'] / r['img_iter_s']:.2f}x time"
                               if r["attack"].startswith("r_pgd") else "")
            base = by.get((r["device"], r["model"], r.get("base", "")))
            r["vs_eager_fp32"] = (f"{r['img_iter_s'] / base['img_iter_s']:.2f}x eager fp32"
                                  if base is not None and base is not r else "")
            r["flops_vs_pgd"] = (f"{r['mflop_img_iter'] / pgd['mflop_img_iter']:.2f}x"
                                 if r["attack"] == "r_pgd" else "")
            ta = by.get((r["device"], r["model"], "torchattacks_pgd"))
            r["vs_torchattacks"] = (f"{r['img_iter_s'] / ta['img_iter_s']:.2f}x speed"
                                    if ta and r["attack"] == "pgd" else "")
        for r in arows:
            r["mflop_img_iter"] = "" if r["mflop_img_iter"] is None else f"{r['mflop_img_iter']:.2f}"
        out += ["\n## Attack throughput on the default MNIST config (image-iterations/s)\n",
                format_table(arows, ["device", "arch", "model", "attack", "mode", "img_iter_s", "vs_eager_fp32",
                                    "vs_our_pgd", "mflop_img_iter", "flops_vs_pgd", "vs_torchattacks"]),
                "\n`mflop_img_iter`: matmul and convolution MFLOPs of one iteration per image, forward and "
                "backward, counted with torch's FLOP formulas; `flops_vs_pgd` is R-PGD's FLOP ratio to PGD, "
                "the time ratio an implementation without other overheads would reach. R-PGD needs two "
                "forward/backward passes through the classifier (one per stage) plus the decoder's forward "
                "and backward in stage 2. `*_compiled` rows (`--compile`): the same attack with the model's "
                "forward through torch.compile (as paper-scale runs use it; compilation not timed); `*_bf16` "
                "rows: the attack under bf16 autocast (the evaluation's fast path, `precision: bf16`); "
                "`vs_eager_fp32` compares with the eager fp32 row of the same attack, measured in the same run."]
        print("\n".join(out[-3:]))
    if args.out:
        from pathlib import Path

        write_text_atomic(Path(args.out), "\n".join(out) + "\n")
        print(f"\nwritten to {args.out}")
    return 0
