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
from .bench_reference import ReferenceCapsNet, reference_train_step
from .config import load_group
from .cost import MODELS, projected_seconds, table3_groups
from .evaluation import attack_precision, compiled_forward
from .io import write_text_atomic
from .reporting.markdown import hms
from .models import build_model, count_parameters, margin_loss


def sync_device(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timeit(fn, steps: int, device: str, warmup: int = 2) -> float:
    """Median seconds per call over ``steps`` timed calls (robust to other load on the machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync_device(device)
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


#: training paths of :func:`bench_model` (the same as ``lit-caps training-check``): (compile, bf16 autocast)
TRAIN_PATHS = {"eager fp32": (False, False), "compiled fp32": (True, False), "compiled bf16": (True, True)}


def bench_model(name: str, arch_name: str, device: str = "cpu", batch_size: int = 128, steps: int = 5,
                path: str = "eager fp32") -> dict:
    """Training (forward, losses, backward, Adam step) and forward images/s of one model, on one batch.
    ``path``: the training step as :class:`~lit_caps.training.LitReconstructionClassifier` runs it
    eagerly, with the forward through ``torch.compile`` (``train.compile``, models whose
    ``compile_helps``) and under bf16 autocast (``train.precision=bf16-mixed``). Compilation happens
    in the warm-up steps, untimed."""
    compile_fwd, bf16 = TRAIN_PATHS[path]
    arch = load_group("arch", arch_name)
    torch.manual_seed(0)
    model = build_model(name, **arch).to(device)
    compile_fwd = compile_fwd and model.compile_helps
    forward_fn = torch.compile(model.forward) if compile_fwd else model
    x = torch.rand(batch_size, *arch["image_shape"], device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def train_step():
        with torch.autocast(dev_type, torch.bfloat16, enabled=bf16):
            out = forward_fn(x)
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
    return {"device": device, "arch": arch_name, "model": name, "path": path if compile_fwd or bf16 else "eager fp32",
            "params": count_parameters(model), "batch": batch_size, "train_img_s": batch_size / t_train,
            "forward_img_s": batch_size / t_fwd}


def bench_reference(device: str = "cpu", batch_size: int = 128, steps: int = 5) -> dict:
    """The same two timings of :class:`~lit_caps.bench_reference.ReferenceCapsNet` (XifengGuo's
    algorithm, Sabour sizes), eager fp32 as its repository runs it."""
    torch.manual_seed(0)
    model = ReferenceCapsNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def forward():
        with torch.no_grad():
            model(x)

    model.train()
    t_train = _timeit(lambda: reference_train_step(model, opt, x, y), steps, device)
    model.eval()
    t_fwd = _timeit(forward, steps, device)
    return {"device": device, "arch": "sabour", "model": "reference", "path": "eager fp32",
            "params": count_parameters(model), "batch": batch_size, "train_img_s": batch_size / t_train,
            "forward_img_s": batch_size / t_fwd}


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


def training_section(devices, paths, batch_size: int, steps: int) -> list[str]:
    """Markdown lines: the reference CapsNet beside our Sabour-config CapsNet on each training path,
    and the default MNIST CapsNet on each path, all measured in this call."""
    rows = []
    for device in devices:
        ref = bench_reference(device, batch_size, steps)
        ref["vs_reference"], ref["vs_eager_fp32"] = "", ""
        rows.append(ref)
        print(f"  {device} reference (sabour) train {ref['train_img_s']:8.1f} img/s", flush=True)
        for arch in ("sabour", "mnist"):
            eager = None
            for path in paths:
                r = bench_model("capsnet", arch, device, batch_size, steps, path=path)
                eager = r if path == "eager fp32" else eager
                r["vs_reference"] = f"{r['train_img_s'] / ref['train_img_s']:.2f}x reference" if arch == "sabour" else ""
                r["vs_eager_fp32"] = (f"{r['train_img_s'] / eager['train_img_s']:.2f}x eager fp32"
                                      if eager is not None and r is not eager else "")
                rows.append(r)
                print(f"  {device} capsnet {arch} {path}: train {r['train_img_s']:8.1f} img/s {r['vs_reference']}",
                      flush=True)
    return ["\n## Training step: the reference CapsNet and our training paths (images/s)\n",
            format_table(rows, ["device", "arch", "model", "path", "params", "train_img_s", "vs_reference",
                                "vs_eager_fp32", "forward_img_s"]),
            "\n`reference`: XifengGuo/CapsNet-Pytorch's algorithm (u_hat by one broadcast matmul, then the "
            "routing loop with a detached u_hat; `lit_caps/bench_reference.py`, written here from its description) "
            "at the Sabour et al. sizes, eager fp32. `capsnet`: ours (batched u_hat, einsum routing) with the "
            "training step as `lit-caps fit` runs it: `eager fp32`, `compiled fp32` (`train.compile=true`: the "
            "forward through torch.compile, compilation untimed) and `compiled bf16` (plus "
            "`train.precision=bf16-mixed`). Which path is the default is decided by `reports/training_check.md` "
            "(5-epoch validation error); `vs_reference` and `vs_eager_fp32` compare rows of this one run."]


#: an H200's dense fp32 peak without tensor cores (NVIDIA's data sheet): the GPU projection's assumption
H200_FP32_FLOPS = 67e12
GPU_UTILIZATION = 0.10  # an assumed fraction of that peak (the CNNs reach ~50% of this CPU's, the CapsNet ~15%)


def cost_section(arows: list[dict], mrows: list[dict], device: str = "cpu") -> list[str]:
    """Markdown lines: the projected time of ``make reproduce-table3 SCALE=paper`` (MNIST and
    Fashion-MNIST) as N, iterations and betas grow, from this run's R-PGD throughput (this CPU) and
    from its FLOP counts at an assumed GPU throughput (a projection, labelled)."""
    rate = {r["model"]: r["img_iter_s"] for r in arows if r["device"] == device and r["attack"] == "r_pgd"}
    fast = dict(rate)
    for r in arows:  # the paper scale's default: the CapsNet's R-PGD compiled in bf16 (fast_path)
        if r["device"] == device and r["model"] == "capsnet" and r["attack"] == "r_pgd_compiled_bf16":
            fast["capsnet"] = r["img_iter_s"]
    flops = {r["model"]: float(r["mflop_img_iter"]) * 1e6 for r in arows
             if r["device"] == device and r["attack"] == "r_pgd" and r["mflop_img_iter"] not in ("", None)}
    fwd = {(r["arch"], r["model"]): r["forward_img_s"] for r in mrows if r["device"] == device}
    models = [m for m in MODELS if m in rate]
    if not models:
        return []

    def arch_factor(d, m):  # Fashion-MNIST's arch (mnist_wide) relative to MNIST's, from the forward throughput
        if d == "mnist":
            return 1.0
        a = {"fashion_mnist": "mnist_wide", "svhn": "svhn"}[d]
        return fwd.get((a, m), fwd.get(("mnist", m), 1.0)) / fwd.get(("mnist", m), 1.0)

    def seconds(table: dict, **kw) -> float:
        groups = [g for g in table3_groups("paper", ("mnist", "fashion_mnist"), **kw) if g.model in models]
        return projected_seconds(groups, lambda d, m: table[m] * arch_factor(d, m))

    def gpu_seconds(**kw) -> float | None:
        if set(flops) < set(models):
            return None
        groups = [g for g in table3_groups("paper", ("mnist", "fashion_mnist"), **kw) if g.model in models]
        return sum(g.image_iterations * flops[g.model] / arch_factor(g.dataset, g.model) for g in groups) / (
            H200_FP32_FLOPS * GPU_UTILIZATION)

    lines = ["| varied | N | MNIST iterations | betas per cell group | cells | CPU, eager fp32 | CPU, paper default "
             "(CapsNet compiled bf16) | one H200, projected |", "|---|---|---|---|---|---|---|---|"]
    base = {"n": 1000, "steps": 1000, "betas": 15}
    grid = [("(paper scale)", {})] + [("N", {"n": v}) for v in (250, 500, 2000)] + \
           [("iterations", {"steps": v}) for v in (250, 500)] + [("betas", {"betas": v}) for v in (6, 11)]
    for what, change in grid:
        kw = {**base, **change}
        cells = sum(g.betas for g in table3_groups("paper", ("mnist", "fashion_mnist"), **kw) if g.model in models)
        g = gpu_seconds(**kw)
        lines.append(f"| {what} | {kw['n']} | {kw['steps']} | {kw['betas']} | {cells} | {hms(seconds(rate, **kw))} | "
                     f"{hms(seconds(fast, **kw))} | {'' if g is None else hms(g)} |")
    return ["\n## How the paper-scale Table 3 cost grows (MNIST + Fashion-MNIST attack cells; projected)\n",
            "\n".join(lines) + "\n\nEach cell group (dataset, model, targeting) is `betas` R-PGD attacks of N images x "
            "the dataset's iterations (Fashion-MNIST: half of MNIST's, as Appendix C), so the cost is linear in N, "
            "iterations and betas: every row is N x iterations x betas image-iterations divided by a throughput. "
            "CPU columns: the R-PGD rows of this run (image-iterations/s of this CPU; Fashion-MNIST's wider arch "
            "scaled by the forward-throughput ratio of the model table), training not included. H200 column: "
            f"a **projection**, not a measurement: the R-PGD FLOPs per image-iteration counted above, at "
            f"{GPU_UTILIZATION:.0%} of the H200's {H200_FP32_FLOPS / 1e12:.0f} TFLOP/s fp32 peak (an assumption: at the "
            "paper scale's 100-image chunks a GPU's small routing kernels are bound by launch latency, so the "
            "real time may be several times this; `make gpu-check` measures it: reports/bench_gpu.md)."]


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
    paths = list(getattr(args, "train_paths", None) or [])
    if paths:
        out += training_section(devices, paths, args.batch_size, args.steps)
        print("\n".join(out[-3:]))
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
        out += cost_section(arows, rows)
        print("\n".join(out[-2:]))
    if args.out:
        from pathlib import Path

        write_text_atomic(Path(args.out), "\n".join(out) + "\n")
        print(f"\nwritten to {args.out}")
    return 0
