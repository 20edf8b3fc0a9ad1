"""Lightning's contract: a Trainer argument, callback or scheduler means in reglab what it
means to a stock LightningModule trained by a stock Trainer.

The reference below is such a module (nn.Linear, MSE, SGD, self.log) fed by a stock
DataLoader whose sampler draws the same seeded order of rows as reglab's data module.
Each row runs ``train`` (the function behind ``reglab-train``) with an override and the
reference with the same Trainer argument or callback, on ``noisy_line``, and compares
the parameters they end with (or where they stopped, or the files they wrote).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config, run_cli, script
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

EPOCHS = 12
BASE = ["experiment=noisy_line", f"trainer.max_epochs={EPOCHS}", "logger=none",
        "callbacks.plots=null", "trainer=cpu"]


class EpochOrder(Sampler[int]):
    """reglab's shuffle: epoch e visits rows in randperm(seed * 1_000_003 + e)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class Reference(pl.LightningModule):
    """A stock LightningModule of the kind a Lightning user writes."""

    def __init__(self, layer: nn.Linear, lr: float, scheduler: Any = None) -> None:
        super().__init__()
        self.layer, self.lr, self.scheduler = layer, lr, scheduler
        self.validations: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.layer(x), y))

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validations.append(self.trainer.current_epoch)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.scheduler is None:
            return opt
        config = dict(self.scheduler)
        make = config.pop("make")
        config["scheduler"] = make(opt, self.trainer)
        return {"optimizer": opt, "lr_scheduler": config}


def reference(tmp_path: Path, *extra: str, scheduler: Any = None, shuffle: bool = True,
              **trainer_kwargs: Any) -> tuple[Reference, pl.Trainer]:
    """Train the reference on noisy_line's data, from the weights reglab starts from."""
    cfg = compose_config([*BASE, *extra], tmp_path / "ref-cfg")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)  # the same data, drawn in the same order as train
    datamodule.prepare()
    layer = nn.Linear(1, 1)  # the same generator state as reglab's model gets
    x, y = (t.float() for t in datamodule.splits["train"])  # as training serves them
    order = EpochOrder(len(x), cfg.seed) if shuffle else None
    train = DataLoader(TensorDataset(x, y), batch_size=cfg.data.batch_size, sampler=order)
    val = DataLoader(TensorDataset(x, y), batch_size=len(x))
    module = Reference(layer, float(cfg.optimizer.lr), scheduler)
    kwargs = {"max_epochs": EPOCHS, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False,
              "num_sanity_val_steps": 0, "accelerator": "cpu", **trainer_kwargs}
    trainer = pl.Trainer(default_root_dir=str(tmp_path / "ref"), **kwargs)
    trainer.fit(module, train, val)
    return module, trainer


def params(module: Reference) -> list[float]:
    return [float(module.layer.weight.detach().flatten()[0]),
            float(module.layer.bias.detach()[0])]


def reglab_params(metrics: dict[str, Any]) -> list[float]:
    return [metrics["params"]["weight"][0][0], metrics["params"]["bias"]]


def assert_same(metrics: dict[str, Any], module: Reference, tol: float = 1e-6) -> None:
    ours, theirs = reglab_params(metrics), params(module)
    assert all(abs(a - b) <= tol for a, b in zip(ours, theirs, strict=True)), (ours, theirs)


# -- Trainer arguments ----------------------------------------------------------------
@pytest.mark.parametrize(("override", "kwargs"), [
    ([], {}),
    (["+trainer.gradient_clip_val=0.5"], {"gradient_clip_val": 0.5}),
    (["+trainer.gradient_clip_val=0.05", "+trainer.gradient_clip_algorithm=value"],
     {"gradient_clip_val": 0.05, "gradient_clip_algorithm": "value"}),
    (["+trainer.accumulate_grad_batches=2"], {"accumulate_grad_batches": 2}),
    (["+trainer.max_steps=37"], {"max_steps": 37}),
    (["+trainer.limit_train_batches=3"], {"limit_train_batches": 3}),
    (["+trainer.limit_train_batches=0.5"], {"limit_train_batches": 0.5}),
    (["trainer.precision=64-true"], {"precision": "64-true"}),
    (["trainer.precision=bf16-mixed"], {"precision": "bf16-mixed"}),
    (["trainer.deterministic=true"], {"deterministic": True}),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_trainer_argument_matches_stock_lightning(run_train, tmp_path, override, kwargs):
    m, _ = run_train(*BASE, *override)
    ref, trainer = reference(tmp_path, *override, **kwargs)
    assert m["steps"] == trainer.global_step
    assert_same(m, ref, tol=1e-2 if "bf16" in str(override) else 1e-6)


def test_max_steps_stops_mid_epoch(run_train):
    m, _ = run_train(*BASE, "+trainer.max_steps=37")
    assert m["steps"] == 37 and m["status"] == "completed"


def test_overfit_batches_trains_on_the_same_first_batches(run_train, tmp_path):
    m, _ = run_train(*BASE, "+trainer.overfit_batches=2")
    ref, trainer = reference(tmp_path, shuffle=False, overfit_batches=2)
    assert m["steps"] == trainer.global_step == 2 * EPOCHS
    assert_same(m, ref)


def test_fast_dev_run_takes_one_step_and_writes_no_checkpoint(run_train, tmp_path):
    m, run_dir = run_train(*BASE, "+trainer.fast_dev_run=true")
    ref, trainer = reference(tmp_path, fast_dev_run=True)
    assert m["steps"] == trainer.global_step == 1
    assert_same(m, ref)
    assert not list(run_dir.glob("checkpoints/*.ckpt"))
    # A smoke test leaves no model claiming to be trained, and no logs (as Lightning says).
    assert m["status"] == "fast_dev_run" and not (run_dir / "model.pt").exists()
    assert not (run_dir / "tensorboard").exists() and m["logs"] == {}


@pytest.mark.parametrize(("override", "kwargs"), [
    (["trainer.check_val_every_n_epoch=3"], {"check_val_every_n_epoch": 3}),
    (["+trainer.val_check_interval=0.5"], {"val_check_interval": 0.5}),
])
def test_validation_schedule_matches(run_train, tmp_path, override, kwargs):
    m, _ = run_train(*BASE, *override)
    ref, _ = reference(tmp_path, *override, **kwargs)
    assert [e for e, _ in m["history"]["val_loss"]] == ref.validations
    assert_same(m, ref)


def test_min_epochs_holds_off_early_stopping(run_train, tmp_path):
    es = ["+callbacks.es._target_=pytorch_lightning.callbacks.EarlyStopping",
          "+callbacks.es.monitor=val/loss", "+callbacks.es.patience=1",
          "+callbacks.es.min_delta=10"]
    m, _ = run_train(*BASE, *es, "+trainer.min_epochs=7")
    ref, trainer = reference(tmp_path, min_epochs=7, callbacks=[
        pl.callbacks.EarlyStopping(monitor="val/loss", patience=1, min_delta=10)])
    assert m["epochs"] == trainer.current_epoch == 7
    assert_same(m, ref)


def test_max_time_stops_the_fit(run_train):
    m, _ = run_train(*BASE[:1], "trainer.max_epochs=-1", "+trainer.max_time=00:00:00:02",
                     "logger=none", "callbacks.plots=null")
    assert m["status"] == "completed" and m["epochs"] > 1
    assert m["fit_seconds"] < 30


def test_log_every_n_steps_writes_at_lightnings_steps(run_train, tmp_path):
    m, run_dir = run_train(*BASE, "logger=csv", "trainer.log_every_n_steps=5")
    ref, _ = reference(tmp_path, log_every_n_steps=5, logger=pl.loggers.CSVLogger(
        str(tmp_path / "refcsv"), name="", version=""))

    def steps(path: Path, column: str) -> list[int]:
        with path.open() as fh:
            return [int(r["step"]) for r in csv.DictReader(fh) if r.get(column)]

    ours = steps(run_dir / "csv" / "metrics.csv", "train/loss")
    theirs = steps(tmp_path / "refcsv" / "metrics.csv", "train/loss")
    assert ours == theirs and len(ours) == EPOCHS * 8 // 5
    # train/loss_epoch every epoch, at the step Lightning writes epoch-level metrics.
    ours = steps(run_dir / "csv" / "metrics.csv", "train/loss_epoch")
    assert ours == steps(tmp_path / "refcsv" / "metrics.csv", "train/loss_epoch")
    assert len(ours) == EPOCHS
    assert_same(m, ref)


class Watcher(pl.Callback):
    """A user's own callback reading ``callback_metrics`` after every step, at every
    epoch's end and at every hook around validation and the fit (defined here, outside
    reglab, as a user's would be)."""

    made: ClassVar[list[Watcher]] = []
    KEYS = ("train/loss", "train/loss_epoch", "val/loss")

    def __init__(self) -> None:
        self.steps: list[float | None] = []
        self.epochs: list[float | None] = []
        #: (hook, (train/loss, train/loss_epoch, val/loss)) in the order the hooks ran.
        self.hooks: list[tuple[str, tuple[float | None, ...]]] = []
        Watcher.made.append(self)

    @staticmethod
    def _read(trainer: pl.Trainer, key: str) -> float | None:
        value = trainer.callback_metrics.get(key)
        return None if value is None else float(value)

    def _note(self, hook: str, trainer: pl.Trainer) -> None:
        self.hooks.append((hook, tuple(self._read(trainer, k) for k in self.KEYS)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(self._read(trainer, "train/loss"))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(self._read(trainer, "train/loss_epoch"))
        self._note("train_epoch_end", trainer)


def _noting(hook: str) -> Callable[..., None]:
    def on_hook(self: Watcher, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note(hook, trainer)
    return on_hook


# The hooks around validation and the fit, each noting what callback_metrics holds then.
for _hook in ("train_epoch_start", "validation_start", "validation_epoch_end",
              "validation_end", "train_end", "fit_end"):
    setattr(Watcher, f"on_{_hook}", _noting(_hook))


def test_a_users_callback_reads_what_a_stock_module_logs(run_train, tmp_path):
    """train/loss after every step (not only at logging steps) and, in a callback's
    on_train_epoch_end, the current epoch's train/loss_epoch (not the one before)."""
    Watcher.made.clear()
    m, _ = run_train(*BASE, "+callbacks.watch._target_=test_lightning_contract.Watcher")
    (ours,) = Watcher.made
    theirs = Watcher()
    ref, _ = reference(tmp_path, callbacks=[theirs])
    assert len(ours.steps) == len(theirs.steps) == EPOCHS * 8
    assert None not in ours.steps and None not in ours.epochs
    assert ours.steps == pytest.approx(theirs.steps, rel=1e-6)
    assert ours.epochs == pytest.approx(theirs.epochs, rel=1e-6)
    # Every hook around validation and the fit: the same hooks in the same order, each
    # seeing the same three values (or the same absence) as under the stock module.
    assert {h for h, _ in ours.hooks} == {"train_epoch_start", "train_epoch_end",
                                          "validation_start", "validation_epoch_end",
                                          "validation_end", "train_end", "fit_end"}
    assert [h for h, _ in ours.hooks] == [h for h, _ in theirs.hooks]
    for (hook, got), (_, want) in zip(ours.hooks, theirs.hooks, strict=True):
        assert [v is None for v in got] == [v is None for v in want], (hook, got, want)
        assert [v for v in got if v is not None] == pytest.approx(
            [v for v in want if v is not None], rel=1e-6), (hook, got, want)
    assert_same(m, ref)


# -- callbacks --------------------------------------------------------------------------
def _cb(name: str, target: str, **kwargs: Any) -> list[str]:
    return [f"+callbacks.{name}._target_={target}",
            *(f"+callbacks.{name}.{k}={v}" for k, v in kwargs.items())]


@pytest.mark.parametrize("monitor", ["val/loss", "train/loss_epoch", "train/loss"])
def test_early_stopping_stops_at_the_same_epoch(run_train, tmp_path, monitor):
    m, _ = run_train(*BASE, "trainer.max_epochs=200", *_cb(
        "es", "pytorch_lightning.callbacks.EarlyStopping", monitor=monitor, patience=2,
        min_delta=0.01))
    ref, trainer = reference(tmp_path, max_epochs=200, callbacks=[
        pl.callbacks.EarlyStopping(monitor=monitor, patience=2, min_delta=0.01)])
    assert m["epochs"] == trainer.current_epoch < 200
    assert_same(m, ref)


def test_early_stopping_on_the_step_loss_with_fewer_steps_than_the_logging_interval(
        run_train, tmp_path):
    """``log_every_n_steps`` paces the loggers only: train/loss is in callback_metrics
    after every step, so a monitor on it works whatever the interval."""
    extra = ["data=uniform_line", "trainer.log_every_n_steps=50"]
    m, _ = run_train(*BASE, *extra, "trainer.max_epochs=200", *_cb(
        "es", "pytorch_lightning.callbacks.EarlyStopping", monitor="train/loss", patience=2,
        min_delta=0.01))
    assert m["status"] == "completed", m.get("error")
    ref, trainer = reference(tmp_path, *extra, max_epochs=200, log_every_n_steps=50,
                             callbacks=[pl.callbacks.EarlyStopping(
                                 monitor="train/loss", patience=2, min_delta=0.01)])
    assert m["epochs"] == trainer.current_epoch < 200
    assert_same(m, ref)


def test_stochastic_weight_averaging(run_train, tmp_path):
    m, _ = run_train(*BASE, *_cb("swa", "pytorch_lightning.callbacks.StochasticWeightAveraging",
                                 swa_lrs=0.001, swa_epoch_start=0.5))
    plain, _ = run_train(*BASE)
    ref, _ = reference(tmp_path, callbacks=[
        pl.callbacks.StochasticWeightAveraging(swa_lrs=0.001, swa_epoch_start=0.5)])
    assert reglab_params(m) != reglab_params(plain)  # SWA did start
    assert_same(m, ref)


def test_gradient_accumulation_scheduler(run_train, tmp_path):
    m, _ = run_train(*BASE, *_cb(
        "gas", "pytorch_lightning.callbacks.GradientAccumulationScheduler",
        scheduling="{0:1,4:2}"))
    ref, trainer = reference(tmp_path, callbacks=[
        pl.callbacks.GradientAccumulationScheduler(scheduling={0: 1, 4: 2})])
    assert m["steps"] == trainer.global_step < EPOCHS * 8
    assert_same(m, ref)


def test_model_checkpoint_writes_the_same_files(run_train, tmp_path):
    _, run_dir = run_train(*BASE, "trainer.max_epochs=30", *_cb(
        "every10", "pytorch_lightning.callbacks.ModelCheckpoint", every_n_epochs=10,
        save_top_k=3, monitor="val/loss", dirpath=str(tmp_path / "ours")))
    reference(tmp_path, max_epochs=30, enable_checkpointing=True, callbacks=[
        pl.callbacks.ModelCheckpoint(every_n_epochs=10, save_top_k=3, monitor="val/loss",
                                     dirpath=str(tmp_path / "theirs"))])
    ours = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert ours == sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert ours == ["epoch=19-step=160.ckpt", "epoch=29-step=240.ckpt", "epoch=9-step=80.ckpt"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # reglab's own still written


def test_learning_rate_monitor_and_timer_and_rich_bar(run_train, tmp_path):
    m, run_dir = run_train(
        *BASE, "logger=csv",
        *_cb("lrm", "pytorch_lightning.callbacks.LearningRateMonitor", logging_interval="step"),
        *_cb("timer", "pytorch_lightning.callbacks.Timer", duration="00:00:10:00"),
        *_cb("rich", "pytorch_lightning.callbacks.RichProgressBar"))
    assert m["status"] == "completed" and m["epochs"] == EPOCHS
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("lr-SGD")]
    # The monitor's own pacing (every logging step), and it alone writes lr-SGD.
    assert [int(r["step"]) for r in rows] == list(range(7, EPOCHS * 8, 8))


def test_a_short_timer_stops_the_fit(run_train):
    m, _ = run_train(*BASE[:1], "trainer.max_epochs=100000", "logger=none",
                     "callbacks.plots=null",
                     *_cb("timer", "pytorch_lightning.callbacks.Timer",
                          duration="00:00:00:02"))
    assert m["status"] == "completed" and 1 < m["epochs"] < 100000


# -- schedulers -------------------------------------------------------------------------
SCHEDULERS = {
    "step": (["scheduler=step", "scheduler.scheduler.step_size=3",
              "scheduler.scheduler.gamma=0.5"],
             {"make": lambda o, t: torch.optim.lr_scheduler.StepLR(o, 3, 0.5),
              "interval": "epoch"}),
    "cosine": (["scheduler=cosine"],
               {"make": lambda o, t: torch.optim.lr_scheduler.CosineAnnealingLR(o, EPOCHS),
                "interval": "epoch"}),
    "onecycle": (["scheduler=onecycle"],
                 {"make": lambda o, t: torch.optim.lr_scheduler.OneCycleLR(
                     o, max_lr=0.01, total_steps=t.estimated_stepping_batches),
                  "interval": "step"}),
    # threshold 0.5: an epoch is "no better" unless val/loss halves, so cuts happen.
    "plateau": (["scheduler=plateau", "scheduler.scheduler.patience=1",
                 "+scheduler.scheduler.threshold=0.5"],
                {"make": lambda o, t: torch.optim.lr_scheduler.ReduceLROnPlateau(
                    o, mode="min", factor=0.5, patience=1, threshold=0.5),
                 "interval": "epoch", "monitor": "val/loss", "strict": False}),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matches_stock_lightning(run_train, tmp_path, name):
    override, config = SCHEDULERS[name]
    m, _ = run_train(*BASE, *override)
    plain, _ = run_train(*BASE, *[o for o in override if o.startswith("optimizer")])
    ref, _ = reference(tmp_path, *override, scheduler=config)
    assert reglab_params(m) != reglab_params(plain)  # the rate did change
    assert_same(m, ref)
    assert m["hparams"]["scheduler"] == name


def test_scheduler_rate_reaches_tensorboard(run_train):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = run_train("experiment=noisy_line", "trainer.max_epochs=6",
                           "scheduler=step", "scheduler.scheduler.step_size=2",
                           "scheduler.scheduler.gamma=0.5", "callbacks.plots=null")
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    rates = [round(e.value, 6) for e in acc.Scalars("train/lr-SGD")]
    # Halved every 2 epochs: each rate in turn, down to the one after the last epoch.
    assert sorted(set(rates), reverse=True) == [0.01, 0.005, 0.0025, 0.00125]
    assert rates == sorted(rates, reverse=True)


# -- the learning-rate finder -----------------------------------------------------------
def test_lr_find_preset_prints_records_and_uses_the_suggestion(run_train, tmp_path, capsys):
    m, _ = run_train(*BASE, "tuner=lr_find", "tuner.lr_find.num_training=40")
    captured = capsys.readouterr()
    out = captured.out
    # Off a terminal (captured here, as in a log or a pipe) without Lightning's tqdm bar.
    assert "Finding best initial lr" not in captured.err + out
    found = m["lr_find"]
    assert found["suggestion"] is not None and "suggested learning rate" in out
    assert found["applied"] and m["hparams"]["lr"] == found["suggestion"]
    assert len(found["lrs"]) == len(found["losses"]) > 10
    # Lightning's own finder, on the stock module from the same weights, agrees.
    from pytorch_lightning.tuner import Tuner

    cfg = compose_config(BASE, tmp_path / "lr-cfg")
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    layer = nn.Linear(1, 1)
    x, y = (t.float() for t in datamodule.splits["train"])  # as training serves them
    loader = DataLoader(TensorDataset(x, y), batch_size=20, sampler=EpochOrder(len(x), 42))
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=str(tmp_path / "lr"))
    finder = Tuner(trainer).lr_find(Reference(layer, 0.01), loader, update_attr=False,
                                    min_lr=1e-6, max_lr=1.0, num_training=40)
    assert abs(finder.suggestion() - found["suggestion"]) <= 1e-6 * found["suggestion"]


# -- what reglab cannot honour ------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["++trainer.strategy=ddp_spawn", "++trainer.devices=2"], "trainer.strategy: ddp_spawn"),
    (["+trainer.gradient_clip_algorithm=bogus"], "trainer: `gradient_clip_algorithm` bogus"),
    # L-BFGS's line search runs a different number of all-reduces on each rank: it hung.
    (["experiment=d2l_lbfgs", "trainer=ddp_cpu"], "optimizer: L-BFGS cannot train "
     "data-parallel"),
    (["optimizer=lbfgs", "trainer.devices=2", "trainer.accelerator=cpu"],
     "optimizer: L-BFGS cannot train data-parallel"),
    # Refused by Lightning only once fit starts: the same one line.
    (["+trainer.overfit_batches=0.25"], "reglab-train: error: trainer: You requested to "
     "check 0.25 of the `train_dataloader`"),
])
def test_a_flag_reglab_cannot_honour_is_one_line_and_exit_2(tmp_path, args, message):
    out = run_cli([script("reglab-train"), *args], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "outputs").glob("*/runs/*"))


def test_the_module_trains_under_a_plain_trainer_with_any_optimizer():
    """The module itself is a stock LightningModule: automatic optimization,
    training_step returns the loss."""
    from reglab.models.regressors import LinearRegression
    from reglab.training.module import RegressionModule

    torch.manual_seed(0)  # the start, not left to whatever ran before in this worker
    module = RegressionModule(LinearRegression(1), partial(torch.optim.Adam, lr=0.1),
                              nn.MSELoss())
    assert module.automatic_optimization
    x = torch.linspace(0, 1, 16).unsqueeze(1)
    trainer = pl.Trainer(max_epochs=150, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x, 3 * x), batch_size=4))
    assert abs(module.model.params()["weight"][0][0] - 3) < 0.1


def test_resume_from_a_mid_epoch_checkpoint_ends_where_one_run_ends(run_train):
    """last.ckpt written part-way through an epoch (here max_steps; a signal does the
    same) records how many batches were served, so the resumed fit serves the rest of
    that epoch's shuffled order and ends bit for bit where an uninterrupted fit ends."""
    whole, _ = run_train(*BASE)
    part, run_dir = run_train(*BASE, "+trainer.max_steps=37")  # epoch 4, batch 5 of 8
    assert part["steps"] == 37
    rest, _ = run_train(*BASE, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert rest["steps"] == whole["steps"] == EPOCHS * 8
    assert reglab_params(rest) == reglab_params(whole)


def test_atexit_handlers_and_loggers_finish_before_the_process_ends(tmp_path: Path):
    """Loggers that finish at exit (wandb, MLflow) rely on atexit: the command ends with
    Python's ordinary exit, so such handlers run."""
    (tmp_path / "probe.py").write_text(
        "import atexit\n"
        "import pytorch_lightning as pl\n\n\n"
        "class AtExit(pl.Callback):\n"
        "    def __init__(self, path):\n"
        "        self.path = path\n\n"
        "    def on_train_end(self, trainer, pl_module):\n"
        "        atexit.register(lambda: open(self.path, 'w').write('finished'))\n")
    marker = tmp_path / "marker.txt"
    out = run_cli([script("reglab-train"), "trainer.max_epochs=5", "callbacks.plots=null",
                   "+callbacks.probe._target_=probe.AtExit", f"+callbacks.probe.path={marker}"],
                  cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert marker.read_text() == "finished"


def test_the_trainers_own_switches_win_over_reglabs_groups(run_train, tmp_path):
    _, run_dir = run_train(*BASE[:1], "trainer.max_epochs=3", "callbacks.plots=null",
                           "+trainer.enable_checkpointing=false", "+trainer.logger=false")
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tensorboard").exists()
    assert (run_dir / "model.pt").is_file() and (run_dir / "metrics.json").is_file()
    extra = tmp_path / "every-epoch"
    _, run_dir = run_train(*BASE, "trainer.max_epochs=3", "+trainer.callbacks=[{_target_: "
                           f"pytorch_lightning.callbacks.ModelCheckpoint, dirpath: '{extra}', "
                           "save_top_k: -1}]")
    assert len(list(extra.glob("*.ckpt"))) == 3  # the user's callback, beside reglab's
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # An explicit true wins too: with reglab's callbacks gone, Lightning's defaults come,
    # as on a plain Trainer (its ModelCheckpoint writes under default_root_dir).
    _, run_dir = run_train(BASE[0], BASE[2], BASE[4], "trainer.max_epochs=3",
                           "callbacks=none", "+trainer.enable_checkpointing=true")
    assert [p.name for p in run_dir.glob("**/*.ckpt")] == ["epoch=2-step=24.ckpt"]


def test_an_explicit_progress_bar_switch_brings_lightnings_bar(tmp_path):
    from reglab.config import parts

    cfg = compose_config([*BASE, "callbacks.progress_bar=null",
                          "+trainer.enable_progress_bar=true"], tmp_path / "run")
    _, callbacks, switches = parts.trainer_parts(cfg)
    assert switches["enable_progress_bar"] is True
    assert not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    trainer = pl.Trainer(**switches, **{k: v for k, v in parts.trainer_config(cfg).items()
                                        if k in ("max_epochs", "accelerator")})
    assert isinstance(trainer.progress_bar_callback, pl.callbacks.ProgressBar)


def test_load_from_checkpoint_needs_no_arguments_and_tests_in_data_units(run_train, tmp_path):
    """What save_hyperparameters gives a stock module: the checkpoint alone rebuilds it,
    and trainer.test / trainer.validate return the metrics they log, in the data's units
    (diabetes is standardized: a module without its scaling would report about 0.5)."""
    from hydra.utils import instantiate

    from reglab.training.module import RegressionModule

    m, run_dir = run_train("data=diabetes", "trainer.max_epochs=3", "callbacks.plots=null",
                           "scheduler=step")
    module = RegressionModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert type(module.loss_fn).__name__ == "MSELoss" and module.scheduler_config
    datamodule = instantiate(compose_config(["data=diabetes"], tmp_path / "x").data)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    assert tested["test/mse"] == pytest.approx(m["test"]["mse"], rel=1e-5)
    assert tested["test/mse"] > 1000  # data units (disease progression squared)
    (validated,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert validated["val/loss"] == pytest.approx(m["val_loss"], rel=1e-5)
    # An argument given wins over the record; the record stays, for the next checkpoint.
    again = RegressionModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt",
                                                  loss=torch.nn.L1Loss())
    assert type(again.loss_fn).__name__ == "L1Loss"
    assert again.parts["optimizer"]["_target_"] == "torch.optim.SGD"
    # A checkpoint whose recorded loss names other code (here nested in its arguments) is
    # refused before anything is imported or run.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "ran"
    ckpt["reglab"]["parts"]["loss"] = {"_target_": "torch.nn.MSELoss", "reduction": {
        "_target_": "pathlib.Path.touch", "self": str(marker)}}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    from reglab.errors import ReglabError

    with pytest.raises(ReglabError, match=r"the loss names pathlib.Path.touch"):
        RegressionModule.load_from_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_load_from_checkpoint_arguments_win_for_a_module_built_in_python(tmp_path):
    """Lightning's promise: keyword arguments given to load_from_checkpoint win over what
    the checkpoint records, so a module built in Python around any model reloads."""
    from reglab.models.regressors import LinearRegression
    from reglab.training.module import RegressionModule

    torch.manual_seed(0)
    module = RegressionModule(LinearRegression(1), partial(torch.optim.Adam, lr=0.1),
                              nn.MSELoss())
    x = torch.linspace(0, 1, 16).unsqueeze(1)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu",
                         default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(TensorDataset(x, 3 * x), batch_size=4))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = RegressionModule.load_from_checkpoint(
        tmp_path / "m.ckpt", model=LinearRegression(1),
        optimizer=partial(torch.optim.Adam, lr=0.1), loss=nn.MSELoss())
    assert again.model.params() == module.model.params()


def test_an_lr_find_suggestion_its_own_curve_does_not_support_is_not_used():
    """Lightning suggests the steepest fall; where the loss had not yet begun to fall
    there (noisy_line: 9.1e-6, a fit 500x above the optimum), reglab keeps the rate."""
    from reglab.training.lr_finder import unsupported

    lrs = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    losses = [10.0, 10.0, 9.9, 5.0, 1.0, 20.0]
    assert "fallen 1% of the way" in unsupported(lrs, losses, 1e-4)
    assert unsupported(lrs, losses, 1e-3) is None  # half-way down: a fair suggestion
    assert unsupported(lrs[:2], losses[:2], 1e-5) is None  # too few points to judge
