"""Training: the LightningModule (:mod:`.module`), ``fit`` with resume and run locks (:mod:`.fit`),
its callbacks (:mod:`.callbacks`) and loggers (:mod:`.loggers`: CSV always, W&B offline unless a
key is set)."""
