"""The LightningModule that trains any :class:`~lit_caps.models.ReconstructionClassifier`.

loss = class loss (margin loss for capsule models, cross-entropy for the CNNs)
     + recon_weight * sum of squared reconstruction errors (Sabour et al. 2017: 0.0005).
The reconstruction is fed the true class's pose during training and the predicted class's at
evaluation time (CNN+R: the whole penultimate layer).

After each validation epoch the per-example validation reconstruction distances d(x) and the
detection threshold at ``fpr`` (default 5%: the 95th percentile) are kept and stored in every
checkpoint under ``checkpoint["detection"]``.

``ema_decay > 0`` keeps an exponential moving average of the weights (Polyak averaging; decay
``min(ema_decay, (1 + n) / (10 + n))`` after n optimizer steps, updated right after each step) in
``self.ema``. The averaged model is the one validated, tested and thresholded (``eval_model()``);
the raw weights are also validated (``val/acc_raw``), so one run compares the two on validation.
A checkpoint holds both:
resuming a fit continues the raw weights and their average, while loading it for evaluation
(``load_from_checkpoint``) puts the averaged weights into ``model``, so every consumer of a
checkpoint gets the model whose error was reported.
"""
from __future__ import annotations

import copy
import warnings

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from ..detection import dedupe_by_index, threshold_at_fpr
from ..models import build_model, margin_loss


#: ``train.lr_schedule``: ``exponential`` (x ``lr_decay`` per epoch, the default) or ``onecycle``.
LR_SCHEDULES = ("exponential", "onecycle")


class LitReconstructionClassifier(L.LightningModule):
    def __init__(
        self,
        model: str = "capsnet",
        arch: dict | None = None,
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        weight_decay: float = 0.0,
        recon_weight: float = 0.0005,
        class_loss: str | None = None,
        fpr: float = 0.05,
        capsule_lr_scale: float = 1.0,
        ema_decay: float = 0.0,
        compile: bool = False,
        lr_schedule: str = "exponential",
    ):
        super().__init__()
        self.save_hyperparameters()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.model = build_model(model, **(arch or {}))
        # compile: the training forward through torch.compile (models whose ``compile_helps``: the
        # CapsNet's routing fuses; the CNNs run eager). A plain attribute, not a submodule, so the
        # checkpoint's keys stay the eager model's; compiled on the first training batch.
        self._train_forward = None
        self.compile_training = bool(compile) and bool(getattr(self.model, "compile_helps", False))
        self.class_loss_name = class_loss or ("margin" if model.startswith("capsnet") else "cross_entropy")
        metrics = lambda: torchmetrics.classification.MulticlassAccuracy(num_classes=self.model.num_classes,
                                                                          average="micro")
        self.train_acc, self.val_acc, self.test_acc = metrics(), metrics(), metrics()
        self.ema = None
        if ema_decay > 0:
            if not 0 < ema_decay < 1:
                raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {ema_decay}")
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
            self.val_acc_raw = metrics()
        self.val_distance = torchmetrics.MeanMetric()
        self.test_distance = torchmetrics.MeanMetric()
        # per-example means synced exactly across DDP ranks (Lightning's sync_dist averages the ranks' means)
        self.val_loss = torchmetrics.MeanMetric()
        self.test_loss = torchmetrics.MeanMetric()
        self._val_parts: list[tuple[Tensor, Tensor]] = []
        self._seen: dict[str, int] = {}  # examples seen this epoch per stage (DDP padding, `_real`)
        self.val_distances: Tensor | None = None
        self.threshold: float | None = None

    def eval_model(self):
        """The model that is validated, tested and attacked: the weight average if kept, else the model."""
        return self.ema if self.ema is not None else self.model

    def forward(self, x: Tensor):
        return self.model(x) if self.training else self.eval_model()(x)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: callbacks' on_train_batch_end (the mid-epoch checkpoint) run
        # before the module's, so a checkpoint taken there would miss this step's update
        self.update_average()

    @torch.no_grad()
    def update_average(self) -> None:
        """One weight-average update, after each optimizer step."""
        if self.ema is None:
            return
        self.ema_updates += 1
        n = float(self.ema_updates)
        d = min(float(self.hparams.ema_decay), (1.0 + n) / (10.0 + n))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def train_forward(self, x: Tensor):
        """The training model's forward: compiled (``compile``: one fused graph per batch shape) or eager."""
        if not self.compile_training:
            return self.model(x)
        if self._train_forward is None:
            self._train_forward = torch.compile(self.model.forward)
            try:  # compiled on this first call: a machine that cannot compile trains eagerly
                return self._train_forward(x)
            except Exception as e:  # noqa: BLE001 - torch.compile's failures have many types
                warnings.warn(f"torch.compile of the training forward failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); training eagerly "
                              "(set train.compile=false to skip the attempt)", stacklevel=2)
                self.compile_training = False
                return self.model(x)
        return self._train_forward(x)

    def class_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.class_loss_name == "margin":
            return margin_loss(logits, y)
        return F.cross_entropy(logits, y)

    def _step(self, batch, train: bool, real: Tensor | None = None):
        """(loss, class loss, per-example SSE, predictions, labels, indices) of a batch; the losses
        over the ``real`` examples only (a mask: not the DistributedSampler's padding), the rest for all."""
        x, y, idx = batch
        net = self.model if train else self.eval_model()
        out = self.train_forward(x) if train else net(x)
        pred = out.logits.argmax(1)
        rec = net.reconstruct(out.poses, y if train else pred)
        sse = (rec - x).flatten(1).pow(2).sum(1)
        m = slice(None) if real is None else real
        cls = self.class_loss(out.logits[m], y[m])
        loss = cls + self.hparams.recon_weight * sse[m].mean()
        return loss, cls, sse, pred, y, idx

    def _real(self, n: int, stage: str) -> Tensor | None:
        """Under DDP, the mask of this batch's examples that are not padding: Lightning's
        DistributedSampler (no shuffling in validation / test) repeats the first examples so that every
        rank gets as many; their metrics would count those twice. Rank r's k-th example is position
        r + k * world of the padded list, padding from position len(dataset) on. None on one process."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        loader = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        sampler = getattr(loader, "sampler", None)
        size = len(getattr(sampler, "dataset", None) or loader.dataset)
        seen = self._seen.get(stage, 0)
        self._seen[stage] = seen + n
        pos = trainer.global_rank + (seen + torch.arange(n, device=self.device)) * trainer.world_size
        return pos < size

    def training_step(self, batch, batch_idx):
        loss, cls, sse, pred, y, _ = self._step(batch, train=True)
        self.train_acc(pred, y)
        self.log_dict({"train/loss": loss, "train/class_loss": cls, "train/recon_sse": sse.mean()}, prog_bar=False)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        real = self._real(len(batch[1]), "val")
        loss, cls, sse, pred, y, idx = self._step(batch, train=False, real=real)
        dist = sse.sqrt()
        self._val_parts.append((idx.detach(), dist.detach()))  # all of them: gathered, then deduplicated
        if real is not None and not bool(real.any()):
            return  # only padding in this batch (its losses are over no example)
        if real is not None:
            pred, y, dist, batch = pred[real], y[real], dist[real], [t[real] for t in batch]
        self.val_acc(pred, y)
        self.val_distance(dist)
        self.val_loss.update(loss.detach(), weight=len(y))
        self.log("val/loss", self.val_loss, on_epoch=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val/distance", self.val_distance, on_epoch=True)
        if self.ema is not None:  # the raw weights on the same images: the average's paired comparison
            with torch.no_grad():
                raw = self.model(batch[0]).logits.argmax(1)  # (the real examples only, under DDP)
            self.val_acc_raw(raw, y)
            self.log("val/acc_raw", self.val_acc_raw, on_epoch=True)

    def on_validation_epoch_start(self) -> None:
        self._val_parts = []
        self._seen["val"] = 0

    def on_test_epoch_start(self) -> None:
        self._seen["test"] = 0

    def on_validation_epoch_end(self) -> None:
        if not self._val_parts or self.trainer.sanity_checking:
            return
        idx = torch.cat([p[0] for p in self._val_parts])
        dist = torch.cat([p[1] for p in self._val_parts]).float()
        if self.trainer.world_size > 1:
            idx = self.all_gather(idx).flatten()
            dist = self.all_gather(dist).flatten()
        idx, dist = dedupe_by_index(idx, dist)
        self.val_distances = dist.cpu()
        self.threshold = threshold_at_fpr(self.val_distances, self.hparams.fpr)
        self.log("val/threshold", self.threshold)
        self._val_parts = []

    def test_step(self, batch, batch_idx):
        real = self._real(len(batch[1]), "test")
        if real is not None and not bool(real.any()):
            return  # only padding in this batch
        loss, cls, sse, pred, y, _ = self._step(batch, train=False, real=real)
        if real is not None:
            pred, y, sse = pred[real], y[real], sse[real]
        self.test_acc(pred, y)
        self.test_distance(sse.sqrt())
        self.test_loss.update(loss.detach(), weight=len(y))
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log("test/acc", self.test_acc, on_epoch=True)
        self.log("test/distance", self.test_distance, on_epoch=True)

    def configure_optimizers(self):
        # capsule_lr_scale: learning-rate multiplier for the routed capsule layers' weights. Their init
        # std (n_out / sqrt(n_in d_out), ~1.7 in the mnist config) is ~50x the other layers', so Adam's
        # scale-free steps move them ~50x more slowly relative to their size; 1.0 = no change.
        k = float(self.hparams.get("capsule_lr_scale", 1.0))
        caps = [p for n, p in self.model.named_parameters() if n.startswith("capsules.") and n.endswith("weight")]
        ids = {id(p) for p in caps}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        if k == 1.0 or not caps:  # one group, as before (checkpoints of earlier runs resume unchanged)
            rest, caps = list(self.model.parameters()), []
        groups = [{"params": rest}] + ([{"params": caps, "lr": self.hparams.lr * k}] if caps else [])
        opt = torch.optim.Adam(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.get("lr_schedule", "exponential") == "onecycle":
            # one cycle over the whole run (Smith & Topor 2017, as fast CIFAR-10 recipes use): a linear
            # warm-up from lr / 10 to lr over the first quarter of the steps, then linear to lr / 1e4
            # after the last step (torch's cycle ends at step total - 1 and goes below 0 past it:
            # Lightning steps it once per optimizer step, so the cycle is one step longer than the run)
            steps = int(self.trainer.estimated_stepping_batches) + 1
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[g.get("lr", self.hparams.lr) for g in groups], total_steps=steps, pct_start=0.25,
                anneal_strategy="linear", cycle_momentum=False, div_factor=10.0, final_div_factor=1e3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.hparams.lr_decay == 1.0:
            return opt
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.hparams.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- detection state travels with the checkpoint ---------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.val_distances is not None:
            checkpoint["detection"] = {
                "val_distances": self.val_distances.clone(),
                "threshold": self.threshold,
                "fpr": self.hparams.fpr,
                "epoch": self.current_epoch,
            }
        # mid-epoch: the running epoch's training accuracy, so that a run resumed there logs the same
        # train/acc_epoch as an uninterrupted one (after the epoch's last batch it is not needed:
        # the metric restarts with the next epoch)
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and not self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            checkpoint["train_metric_state"] = {
                "train_acc": {k: v.detach().clone() for k, v in self.train_acc.metric_state.items()},
                "train_acc_updates": int(self.train_acc._update_count),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        sd = checkpoint.get("state_dict", {})
        if self.ema is not None and not fitting and any(k.startswith("ema.") for k in sd):
            # loaded for evaluation: `model` becomes the weight average (the reported model)
            for k in [k for k in sd if k.startswith("ema.")]:
                sd["model." + k[len("ema."):]] = sd[k].clone()
        det = checkpoint.get("detection")
        if det is not None:
            self.val_distances = det["val_distances"]
            self.threshold = det["threshold"]
        tms = checkpoint.get("train_metric_state")
        if fitting and tms is not None:
            for k, v in tms["train_acc"].items():
                setattr(self.train_acc, k, v.to(getattr(self.train_acc, k).device))
            self.train_acc._update_count = tms["train_acc_updates"]
            self.train_acc._computed = None
