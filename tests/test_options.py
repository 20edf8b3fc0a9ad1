"""Every option of every group composes and trains (a couple of epochs each)."""

from __future__ import annotations

import pytest

FAST = ["trainer.max_epochs=2", "trainer=cpu"]


@pytest.mark.parametrize("overrides", [
    ["data=line"], ["data=linear"], ["data=uniform_line"], ["data=quadratic"],
    ["model=mlp", "model.hidden=[8,4]", "model.activation=tanh"],
    ["model=linear", "model.bias=false"],
    ["optimizer=adam"], ["optimizer=adamw"], ["optimizer=sgd", "optimizer.momentum=0.9"],
    ["optimizer=lbfgs", "data.batch_size=250"],
    ["loss=l1"], ["loss=huber"], ["loss=mse", "loss.reduction=sum"],
    ["logger=csv"], ["logger=none"], ["callbacks=none"],
])
def test_option_trains(run_train, overrides):
    m, run_dir = run_train("experiment=d2l", *overrides, *FAST)
    assert m["status"] == "completed" and m["epochs"] == 2
    assert m["train_loss"] is not None
    assert (run_dir / "model.pt").is_file()
    if "logger=csv" in overrides:
        assert (run_dir / "csv" / "metrics.csv").is_file()
    if "logger=none" in overrides:
        assert not (run_dir / "tensorboard").exists()
    if "callbacks=none" in overrides:
        assert not (run_dir / "checkpoints").exists()


def test_lbfgs_full_batch_converges(run_train):
    m, _ = run_train("experiment=line", "optimizer=lbfgs", "trainer.max_epochs=5")
    assert abs(m["params"]["weight"][0][0] - 2) < 1e-3 and abs(m["params"]["bias"] - 1) < 1e-2
