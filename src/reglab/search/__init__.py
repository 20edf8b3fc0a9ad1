"""Optuna studies behind ``hparams_search=optuna``: the search space, the study in its
storage, the sweep loop (the Hydra sweeper in ``hydra_plugins/reglab_optuna_sweeper``
is a thin shell over :mod:`reglab.search.sweeper`) and the pruning callback a trial's
job reports through."""
