"""Computing this process's chunks of an evaluation: :class:`ChunkWorker` attacks one chunk and
writes its file; :func:`work_chunks` takes the missing chunks one by one under claims
(:mod:`.claims`), so that independent processes sharing the results folder split them."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from .. import attacks
from .chunks import ChunkStore, load_examples, run_chunk, write_chunk
from .claims import ChunkClaim, claim_poll_s, claim_status
from .forward import compile_requested, compiled_forward


class ChunkWorker:
    """Attacks chunks for :func:`~lit_caps.evaluation.evaluate_attack`; sets up (targets, the attack,
    compiled forwards, eval mode) on the first chunk it computes, restores the models' modes on
    :meth:`close`."""

    def __init__(self, model, attacked, dataset, attack_name, attack_fn, attack_settings, dev, eps, beta, targeted,
                 attack_threshold, threshold, seed, positions, chunks, chunk_size, shash, compile, trust_best_flag,
                 precision="fp32"):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.stack = contextlib.ExitStack()
        self.modes = None
        self.attack = None

    def _setup(self) -> None:
        # targets for the whole subset from one generator seeded by `seed`: independent of chunks/ranks
        self.targets = None
        if self.targeted:
            ys = torch.tensor([int(self.dataset[int(p)][1]) for p in self.positions], dtype=torch.long)
            num_classes = int(getattr(self.model, "num_classes", 10))
            self.targets = attacks.random_targets(ys, num_classes,
                                                  torch.Generator().manual_seed(int(self.seed))).long().cpu()
        attack_fn = attacks.build_attack if self.attack_fn is None else self.attack_fn
        kw = dict(self.attack_settings)
        kw.pop("eps", None)
        if self.beta is not None:
            kw["beta"] = float(self.beta)
        self.modes = [(m, m.training) for m in {id(self.model): self.model, id(self.attacked): self.attacked}.values()]
        for m, _ in self.modes:
            m.to(self.dev).eval()
        self.compiled = self.stack.enter_context(
            compiled_forward((self.model, self.attacked), compile_requested(self.compile)))
        self.attack = attack_fn(self.attack_name, self.attacked, eps=self.eps, targeted=bool(self.targeted),
                                threshold=self.attack_threshold, **kw)

    def compute(self, c: int, path: Path) -> None:
        if self.attack is None:
            self._setup()
        pos = self.chunks[c]
        x, y, idx = load_examples(self.dataset, pos)
        cs = self.chunk_size
        t = self.targets[c * cs: c * cs + len(pos)] if self.targets is not None else None
        started, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()
        rec = run_chunk(self.model, self.attack, x, y, idx, t, threshold=float(self.threshold), seed=int(self.seed),
                        chunk_id=c, device=self.dev, trust_best_flag=self.trust_best_flag,
                        precision=self.precision)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finished = time.time()
        write_chunk(path, settings_hash=self.shash, chunk_id=c, positions=pos, records=rec, device=self.dev,
                    compiled=self.compiled, started=started, finished=finished, wall_time_s=wall, cpu_time_s=cpu)

    def close(self) -> None:
        self.stack.close()
        for m, mode in self.modes or ():
            m.train(mode)


def work_chunks(store: ChunkStore, ids: list[int], worker: ChunkWorker, bar, claim_wait_s: float | None,
                label: str) -> None:
    """Compute the missing chunks among ``ids``, each under a claim: claimed chunks are skipped,
    the next free one taken; when only chunks other live processes hold are left, wait for them
    (up to ``claim_wait_s``; None: as long as their claims stay live) and take over any whose
    claim expires."""
    deadline = None if claim_wait_s is None else time.monotonic() + float(claim_wait_s)
    waiting = False
    shown = None
    while True:
        pending = store.missing(ids)
        done = len(ids) - len(pending)
        if shown is not None and done > shown:  # the bar counts the chunks other processes finish too
            bar.update(done - shown)
        shown = done
        if not pending:
            return
        if _compute_one(store, pending, worker):
            waiting = False
            continue
        if deadline is not None and time.monotonic() >= deadline:
            return
        if not waiting:
            holders = sorted({f"{i.get('host', '?')}:{i.get('pid', '?')}"
                              for i in (claim_status(store.claim_path(c))[1] for c in pending)})
            print(f"[lit-caps] {label}: waiting for chunk(s) {pending} that other process(es) compute "
                  f"({', '.join(holders)})", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(claim_poll_s())


def _compute_one(store: ChunkStore, pending: list[int], worker: ChunkWorker) -> bool:
    """Claim the first free chunk of ``pending`` and compute it; False when all are claimed."""
    for c in pending:
        claim = ChunkClaim.acquire(store.claim_path(c))
        if claim is None:
            continue
        try:
            if store.get(c) is None:  # not finished by another process between our look and our claim
                worker.compute(c, store.path(c))
                if store.get(c) is None:
                    raise RuntimeError(f"chunk {c} written to {store.path(c)} does not read back")
        finally:
            claim.release()
        return True
    return False
