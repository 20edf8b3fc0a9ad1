"""The in-memory data path: generators, splits and batching."""

from __future__ import annotations

import pytest
import torch

from reglab import datagen
from reglab.datamodule import RegressionDataModule, TensorBatches, TrainRounds, plan_rounds


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
    batches = TensorBatches(x, x.clone(), batch_size=5, shuffle=True, seed=7)
    assert len(batches) == 5
    first = torch.cat([bx for bx, _ in batches.minibatches(0)]).flatten()
    assert sorted(first.tolist()) == list(range(23))
    assert [len(bx) for bx, _ in batches.minibatches(0)] == [5, 5, 5, 5, 3]
    again = torch.cat([bx for bx, _ in batches.minibatches(0)]).flatten()
    assert torch.equal(first, again)  # same epoch number, same order (resumable)
    second = torch.cat([bx for bx, _ in batches.minibatches(1)]).flatten()
    assert not torch.equal(first, second)
    for bx, by in batches.minibatches(1):
        assert torch.equal(bx, by)  # rows stay paired with their targets


def test_full_batch_is_the_whole_split():
    x = torch.randn(11, 1)
    batches = list(TensorBatches(x, x, batch_size=None))
    assert len(batches) == 1 and batches[0][0].shape == (11, 1)


def test_rounds_tag_each_step_with_its_epoch_and_mark_epoch_ends():
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    claims = [range(0, 3), range(3, 4), range(4, 4)]
    rounds = TrainRounds(TensorBatches(x, x, batch_size=4), block=4, epochs_per_round=3,
                         claim=lambda: claims.pop(0))
    assert rounds.num_minibatches == 3 and len(rounds) == 3  # 9 steps in blocks of 4
    first = list(rounds)
    assert [len(b) for b in first] == [4, 4, 1]
    entries = [e for b in first for e in b]
    assert [(epoch, last) for _, _, epoch, last in entries] == [
        (0, False), (0, False), (0, True), (1, False), (1, False), (1, True),
        (2, False), (2, False), (2, True)]
    assert [[e[2] for e in b] for b in list(rounds)] == [[3, 3, 3]]  # a shorter last round
    iter(rounds)  # an iterator that is never read claims nothing
    assert len(claims) == 1


@pytest.mark.parametrize(("steps", "block", "every", "expected"), [
    (1, 100, 100, (100, 1)),   # the line job: 100 one-step epochs a round, val each
    (1, 100, 10, (100, 1)),    # validation at most once a round, on a multiple of 10
    (1, 100, 1, (100, 1)),
    (1, 100, 300, (100, 3)),
    (1, 100, 250, (50, 5)),    # a round length that divides the interval
    (6, 100, 1, (16, 1)),      # 16 six-step epochs fit in a batch of 100 steps
    (6, 100, 7, (14, 1)),
    (120, 100, 1, (1, 1)),     # epochs longer than a batch: one per round
    (1, 1, 10, (1, 10)),       # steps_per_batch=1: stock Lightning
    (1, 100, None, (1, None)),  # step-based validation: no rounds
])
def test_plan_rounds(steps, block, every, expected):
    assert plan_rounds(steps, block, every) == expected
    k, rounds = expected
    if every is not None and k > 1:
        assert (k * rounds) % every == 0  # validation lands on a multiple of every


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
    """Several optimizer steps per Lightning batch, and several data epochs per Lightning
    epoch, change the pacing, not the arithmetic."""
    common = ["experiment=noisy_line", "trainer.max_epochs=30", "logger=none",
              "callbacks=none"]
    fused, _ = run_train(*common)  # 8 steps an epoch: 12 epochs a Lightning epoch
    grouped, _ = run_train(*common, "data.steps_per_batch=4")
    single, _ = run_train(*common, "data.steps_per_batch=1")
    assert fused["steps"] == grouped["steps"] == single["steps"] == 30 * 8
    assert fused["epochs"] == grouped["epochs"] == single["epochs"] == 30
    assert fused["params"] == grouped["params"] == single["params"]
    assert fused["history"]["train_loss"] == single["history"]["train_loss"]


def test_short_epochs_fused_keep_steps_logging_and_validation(run_train):
    """The line job: 1000 one-step epochs run 100 to a Lightning epoch."""
    fused, run_dir = run_train("trainer.max_epochs=250", "trainer.check_val_every_n_epoch=50")
    stock, _ = run_train("trainer.max_epochs=250", "trainer.check_val_every_n_epoch=50",
                         "data.steps_per_batch=1")
    assert fused["steps"] == stock["steps"] == 250 and fused["epochs"] == 250
    assert fused["params"] == stock["params"]
    # Epoch scalars for the epochs holding a logging step (every 50), and the last.
    logged = [e for e, _ in fused["history"]["train_loss"]]
    assert logged == [0, 50, 100, 150, 200, 249]
    assert logged == [e for e, _ in stock["history"]["train_loss"]]
    # Rounds of 100 epochs (a multiple of 50): validation once a round, and at the end.
    assert [e for e, _ in fused["history"]["val_loss"]] == [99, 199, 249]
    assert [e for e, _ in stock["history"]["val_loss"]] == [49, 99, 149, 199, 249]
    assert (run_dir / "checkpoints" / "best-epoch0249.ckpt").is_file()


def test_resume_goes_on_from_the_data_epoch_reached(run_train, tmp_path):
    """A finished fused run resumed for more epochs ends where one longer run ends."""
    whole, _ = run_train("trainer.max_epochs=330", "logger=none", "callbacks.plots=null")
    first, run_dir = run_train("trainer.max_epochs=150", "logger=none",
                               "callbacks.plots=null")
    assert first["epochs"] == 150
    more, _ = run_train("trainer.max_epochs=330", "logger=none", "callbacks.plots=null",
                        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert more["epochs"] == 330 and more["steps"] == 330
    assert more["params"] == whole["params"]


def test_module_trains_from_a_stock_dataloader():
    """The Lightning module also takes plain [x, y] batches, one data epoch per
    Lightning epoch, from any loader."""
    from functools import partial

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from reglab.models import LinearRegression
    from reglab.module import RegressionModule

    x = torch.linspace(0, 10, 11).unsqueeze(1)
    module = RegressionModule(LinearRegression(1), partial(torch.optim.SGD, lr=0.01),
                              torch.nn.MSELoss())
    trainer = pl.Trainer(max_epochs=300, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x, 2 * x + 1), batch_size=11))
    assert module.epochs_done == 300 and trainer.global_step == 300
    assert [e for e, _ in module.history["train_loss"]] == [*range(0, 300, 50), 299]
    assert abs(module.model.params()["weight"][0][0] - 2) < 0.05
