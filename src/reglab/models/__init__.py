"""Regression models: plain ``torch.nn.Module`` classes, usable without Lightning.

Importing this package stays light (config checks read :mod:`reglab.models.activations`
before torch is loaded); the classes live in :mod:`reglab.models.regressors`.
"""
