"""GPU runs; skipped on machines without CUDA."""

from __future__ import annotations

import pytest
from conftest import cuda

EXPERIMENTS = ["line", "origin", "d2l", "noisy_line", "quadratic_mlp", "d2l_lbfgs",
               "poly_ill", "diabetes"]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_on_the_gpu(run_train, experiment: str):
    cpu, _ = run_train(f"experiment={experiment}", "trainer=cpu", "logger=none")
    gpu, _ = run_train(f"experiment={experiment}", "trainer=gpu", "logger=none")
    assert gpu["status"] == "completed"
    assert gpu["device"].startswith("cuda") and gpu["data_device"].startswith("cuda")
    assert gpu["train_loss"] == pytest.approx(cpu["train_loss"], rel=0.05, abs=1e-6)


@cuda
@pytest.mark.cuda
def test_mlp_in_bf16_mixed(run_train):
    m, _ = run_train("experiment=quadratic_mlp", "trainer=gpu", "trainer.precision=bf16-mixed")
    assert m["status"] == "completed" and m["train_loss"] < 0.05
