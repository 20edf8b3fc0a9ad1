"""The in-memory data path: generators, splits and batching."""

from __future__ import annotations

import pytest
import torch

from reglab.data import synthetic
from reglab.data.datamodule import RegressionDataModule, TensorBatches, TrainBatches


def test_generators_are_seeded():
    a, b = synthetic.linear(seed=3), synthetic.linear(seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, synthetic.linear(seed=4).x)
    q = synthetic.quadratic(noise=0.2, seed=1)
    excess = q.y - q.x.pow(2)
    assert excess.min() >= 0 and excess.max() < 0.2 + 1e-6
    line = synthetic.line(a=2, b=1, start=0, stop=10, num=11)
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


def test_train_batches_resume_mid_epoch_in_the_same_order():
    """Lightning's loader protocol: state_dict says how far into which epoch it got;
    load_state_dict makes the next pass serve the rest of that epoch, in order."""
    x = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    epoch = [3]
    whole = [bx for bx, _ in TrainBatches(TensorBatches(x, x, 5, shuffle=True, seed=1),
                                          lambda: epoch[0])]
    loader = TrainBatches(TensorBatches(x, x, 5, shuffle=True, seed=1), lambda: epoch[0])
    it = iter(loader)
    served = [next(it)[0], next(it)[0]]
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 2}
    fresh = TrainBatches(TensorBatches(x, x, 5, shuffle=True, seed=1), lambda: epoch[0])
    fresh.load_state_dict(state)
    rest = [bx for bx, _ in fresh]
    assert len(rest) == 3
    assert all(torch.equal(a, b) for a, b in zip(served + rest, whole, strict=True))
    epoch[0] = 4  # the next epoch starts from its first batch again
    assert len(list(fresh)) == 5


def test_too_small_split_is_a_clear_error():
    dm = RegressionDataModule(source=lambda: synthetic.line(num=3), test_fraction=0.1)
    with pytest.raises(ValueError, match="test_fraction"):
        dm.prepare()


def test_one_lightning_epoch_is_one_pass_over_the_data(run_train):
    """Epochs are Lightning's: validation at every check_val_every_n_epoch, a point of
    train/loss_epoch for every epoch, a step per mini-batch."""
    m, run_dir = run_train("experiment=noisy_line", "trainer.max_epochs=12",
                           "trainer.check_val_every_n_epoch=3", "logger=none")
    assert m["steps"] == 12 * 8 and m["epochs"] == 12
    assert [e for e, _ in m["history"]["train_loss"]] == list(range(12))
    assert [e for e, _ in m["history"]["val_loss"]] == [2, 5, 8, 11]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))) == 1


def test_resume_goes_on_from_the_epoch_reached(run_train, tmp_path):
    """A finished run resumed for more epochs ends where one longer run ends."""
    whole, _ = run_train("trainer.max_epochs=330", "logger=none", "callbacks.plots=null")
    first, run_dir = run_train("trainer.max_epochs=150", "logger=none",
                               "callbacks.plots=null")
    assert first["epochs"] == 150
    more, _ = run_train("trainer.max_epochs=330", "logger=none", "callbacks.plots=null",
                        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert more["epochs"] == 330 and more["steps"] == 330
    assert more["params"] == whole["params"]


def test_module_trains_from_a_stock_dataloader():
    """The Lightning module also takes plain [x, y] batches from any loader."""
    from functools import partial

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from reglab.models.regressors import LinearRegression
    from reglab.training.module import RegressionModule

    x = torch.linspace(0, 10, 11).unsqueeze(1)
    module = RegressionModule(LinearRegression(1), partial(torch.optim.SGD, lr=0.01),
                              torch.nn.MSELoss())
    trainer = pl.Trainer(max_epochs=300, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x, 2 * x + 1), batch_size=11))
    assert trainer.current_epoch == 300 and trainer.global_step == 300
    assert [e for e, _ in module.history["train_loss"]] == list(range(300))
    assert abs(module.model.params()["weight"][0][0] - 2) < 0.05
