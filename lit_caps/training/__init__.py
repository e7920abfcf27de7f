"""Training: the LightningModule (:mod:`.module`), ``fit`` with resume and run locks (:mod:`.fit`),
its callbacks (:mod:`.callbacks`), the logged metrics read back (:mod:`.metrics`) and loggers (:mod:`.loggers`: CSV always, W&B offline unless a
key is set)."""
