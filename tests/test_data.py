"""The in-memory data path: generators, splits and batching."""

from __future__ import annotations

import pytest
import torch

from reglab import datagen
from reglab.datamodule import RegressionDataModule, TensorBatches


def test_generators_are_seeded():
    a, b = datagen.linear(seed=3), datagen.linear(seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, datagen.linear(seed=4).x)
    q = datagen.quadratic(noise=0.2, seed=1)
    excess = q.y - q.x.pow(2)
    assert excess.min() >= 0 and excess.max() < 0.2 + 1e-6
    line = datagen.line(a=2, b=1, start=0, stop=10, num=11)
    assert line.x.flatten().tolist() == [float(i) for i in range(11)]
    assert torch.allclose(line.y, 2 * line.x + 1)


def test_shuffled_batches_cover_every_row_once_per_epoch():
    x = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    epoch = {"n": 0}
    batches = TensorBatches(x, x.clone(), batch_size=5, shuffle=True, seed=7,
                            epoch_fn=lambda: epoch["n"])
    assert len(batches) == 5
    first = torch.cat([bx for bx, _ in batches]).flatten()
    assert sorted(first.tolist()) == list(range(23))
    assert [len(bx) for bx, _ in batches] == [5, 5, 5, 5, 3]
    again = torch.cat([bx for bx, _ in batches]).flatten()
    assert torch.equal(first, again)  # same epoch number, same order (resumable)
    epoch["n"] = 1
    second = torch.cat([bx for bx, _ in batches]).flatten()
    assert not torch.equal(first, second)
    for bx, by in batches:
        assert torch.equal(bx, by)  # rows stay paired with their targets


def test_full_batch_is_the_whole_split():
    x = torch.randn(11, 1)
    batches = list(TensorBatches(x, x, batch_size=None))
    assert len(batches) == 1 and batches[0][0].shape == (11, 1)


def _module(**kw) -> RegressionDataModule:
    return RegressionDataModule(source=lambda: datagen.linear(num_samples=100, seed=0), **kw)


def test_splits_are_disjoint_and_val_defaults_to_train():
    dm = _module(val_fraction=0.1, test_fraction=0.2, seed=5)
    dm.prepare()
    sizes = {k: len(x) for k, (x, _) in dm.splits.items()}
    assert sizes == {"train": 70, "val": 10, "test": 20}
    rows = torch.cat([x for x, _ in dm.splits.values()])
    assert torch.unique(rows, dim=0).shape[0] == 100
    dm0 = _module(test_fraction=0.2)
    dm0.prepare()
    assert dm0.splits["val"] is dm0.splits["train"] and dm0.has_test


def test_too_small_split_is_a_clear_error():
    dm = RegressionDataModule(source=lambda: datagen.line(num=3), test_fraction=0.1)
    with pytest.raises(ValueError, match="test_fraction"):
        dm.prepare()


def test_grouped_steps_equal_one_step_per_lightning_batch(run_train):
    """Several optimizer steps per Lightning batch change the pacing, not the arithmetic."""
    common = ["experiment=noisy_line", "trainer.max_epochs=3", "logger=none",
              "callbacks=none"]
    grouped, _ = run_train(*common, "data.steps_per_batch=4")
    single, _ = run_train(*common, "data.steps_per_batch=1")
    assert grouped["steps"] == single["steps"] == 3 * 8  # 120 training rows, batches of 20
    assert grouped["params"] == single["params"]
    assert grouped["history"]["train_loss"] == single["history"]["train_loss"]
