"""Data sets that an installed package ships, so nothing is downloaded at run time."""

from __future__ import annotations

import numpy as np
import torch

from reglab.data.dataset import Dataset


def diabetes() -> Dataset:
    """scikit-learn's bundled diabetes set: 442 patients × 10 baseline measurements, and a
    measure of disease progression one year later. Raw units (not pre-scaled), float64."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    x = torch.as_tensor(np.ascontiguousarray(bunch.data, dtype=np.float64))
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.float64)).unsqueeze(1)
    return Dataset(x, y, None, feature_names=list(bunch.feature_names),
                   target_name="progression")
