"""Training: the LightningModule, reglab's Lightning callbacks, the exact fit, lr_find."""
