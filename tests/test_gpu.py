"""GPU runs; skipped on machines without CUDA."""

from __future__ import annotations

import pytest
from conftest import cuda


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("experiment", ["line", "d2l", "quadratic_mlp"])
def test_gpu_trainer(run_train, experiment):
    m, _ = run_train(f"experiment={experiment}", "trainer=gpu")
    assert m["status"] == "completed"
    assert m["train_loss"] < 0.02
