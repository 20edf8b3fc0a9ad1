"""Pictures of a run: PNGs in the run dir, images in TensorBoard, and a real TensorBoard
server that serves the run's scalars, images and HPARAMS."""

from __future__ import annotations

import itertools
import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import script

PNG = b"\x89PNG\r\n\x1a\n"


def images(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path
    from matplotlib.image import imread

    height, width = imread(path).shape[:2]
    assert height > 200 and width > 300


@pytest.fixture(scope="module")
def line_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import compose_config
    from omegaconf import open_dict

    from reglab.cli.train import train

    run_dir = tmp_path_factory.mktemp("line") / "run"
    cfg = compose_config(["trainer.max_epochs=200"], run_dir)
    with open_dict(cfg):
        del cfg.callbacks["progress_bar"]
    train(cfg)
    return run_dir


def test_one_input_run_gets_fit_frames_and_a_landscape(line_run: Path):
    assert_png(line_run / "fit.png")
    assert_png(line_run / "landscape.png")
    assert not (line_run / "pred_vs_actual.png").exists()
    steps = images(line_run)
    assert steps["plots/fit"][0] == 0 and steps["plots/fit"][-1] == 200
    assert len(steps["plots/fit"]) == 10  # callbacks.plots.frames, start and end included
    assert steps["plots/fit"] == sorted(steps["plots/fit"])
    assert steps["plots/landscape"] == [200]


@pytest.mark.parametrize("with_optimum", [True, False])
def test_each_fit_frame_has_the_pixels_of_a_full_render(with_optimum: bool):
    """Frames after the first are drawn over kept pixels; they must be the images a full
    render of the figure gives, for curves under the legend, across the spines and
    beyond the axes."""
    import numpy as np

    from reglab.reporting.figures import run_plots as plots

    x = np.linspace(0.0, 10.0, 11)
    grid = np.linspace(0.0, 10.0, 300)
    animation = plots.FitAnimation(x, 2 * x + 1 + np.sin(x), grid,
                                   2 * grid + 1 if with_optimum else None, 2 * grid + 1)
    curves = [0 * grid, 2 * grid + 1, 40 - 9 * grid, 25 + 0 * grid, 3 * grid - 8]
    for k, curve in enumerate(curves):
        image = animation.frame(curve, f"epoch {10 ** k}")
        assert np.array_equal(image, plots.to_array(animation.fig)), k


@pytest.mark.parametrize("limit", ["+trainer.max_time=00:00:00:01", "+trainer.max_steps=400"])
def test_a_fit_of_no_known_length_still_gets_its_frames(run_train, limit):
    """max_epochs=-1 with max_time or max_steps: `frames` images spread over the fit (a
    frame every epoch drew thousands and wrote a 126 MB event file)."""
    m, run_dir = run_train("trainer.max_epochs=-1", limit, "callbacks.last_checkpoint=null")
    steps = images(run_dir)["plots/fit"]
    assert m["epochs"] > 100 and len(steps) == 10, (m["epochs"], steps)
    assert steps[0] == 0 and steps[-1] == m["steps"] and steps == sorted(steps)
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert max(gaps[:-1]) <= 2 * min(gaps[:-1])  # spread evenly, not bunched at the start


def test_several_inputs_get_predicted_vs_actual(run_train):
    _, run_dir = run_train("experiment=d2l", "trainer.max_epochs=1")
    assert_png(run_dir / "pred_vs_actual.png")
    assert not (run_dir / "fit.png").exists() and not (run_dir / "landscape.png").exists()
    assert "plots/pred_vs_actual" in images(run_dir)


def test_one_parameter_landscape_and_mlp_fit(run_train):
    _, origin = run_train("experiment=origin", "trainer.max_epochs=20")
    assert_png(origin / "landscape.png")
    _, mlp = run_train("experiment=quadratic_mlp", "trainer.max_epochs=10")
    assert_png(mlp / "fit.png")
    assert not (mlp / "landscape.png").exists()  # no closed form, no 2-D landscape


def steps_of(run_dir: Path) -> list[int]:
    return images(run_dir)["plots/fit"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def test_real_tensorboard_serves_scalars_images_and_hparams(line_run: Path):
    """docs/tensorboard.md's command, on a run: every tag and tab the page shows."""
    from docs_blocks import block

    documented = shlex.split(block("docs/tensorboard.md", 0).text, comments=True)
    assert documented[:2] == ["tensorboard", "--logdir"], documented
    port = free_port()
    exe = script("tensorboard")
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "tensorboard.main"]
    server = subprocess.Popen([*cmd, "--logdir", str(line_run), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                scalars = json.loads(get(f"{base}/data/plugin/scalars/tags"))
                if scalars:
                    break
            except OSError:
                pass
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, "tensorboard did not answer"
            time.sleep(0.5)
        tags = scalars["tensorboard"]
        for tag in ("train/loss", "train/loss_epoch", "val/loss", "train/loss_closed_form",
                    "weights/weight_0", "weights/bias", "train/lr-SGD", "x-axis/epoch"):
            assert tag in tags, tag
        # The optimum as a run of its own: another colour, named, on the loss's chart.
        assert "train/loss_epoch" in scalars["tensorboard/least_squares_optimum"]
        layout = json.loads(get(f"{base}/data/plugin/custom_scalars/layout"))
        assert layout["category"][0]["chart"][0]["multiline"]["tag"] == ["^train/loss_epoch$"]
        image_tags = json.loads(get(f"{base}/data/plugin/images/tags"))["tensorboard"]
        assert {"plots/fit", "plots/landscape"} <= set(image_tags)
        frames = json.loads(get(f"{base}/data/plugin/images/images?run=tensorboard"
                                "&tag=plots/fit"))
        assert [f["step"] for f in frames] == steps_of(line_run)
        blob = get(f"{base}/data/plugin/images/individualImage?{frames[-1]['query']}")
        assert blob[:8] == PNG
        experiment = json.loads(get(f"{base}/data/plugin/hparams/experiment",
                                    data=json.dumps({"experimentName": ""}).encode()))
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"lr", "optimizer", "batch_size", "max_epochs"} <= hparams
        assert {"val/loss", "train/loss_epoch"} <= metrics and "hp_metric" not in metrics
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("finalized", [True, False])
def test_the_tensorboard_logger_writes_every_scalar_it_holds(tmp_path: Path, finalized: bool):
    """Scalars handed to the event writer in bursts (``burst_seconds``) all reach the
    event file, in order: at ``finalize``, or when the logger is dropped without it."""
    import gc

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from reglab.reporting.tensorboard_logger import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="v", burst_seconds=3600)
    for step in range(2500):
        logger.log_metrics({"train/loss_epoch": 1.0 / (step + 1), "epoch": step}, step)
    assert logger._held  # held, not yet written
    if finalized:
        logger.finalize("success")
    else:
        logger.experiment  # noqa: B018 - the writer exists, as in a run
        del logger
        gc.collect()
    acc = EventAccumulator(str(tmp_path / "tb" / "v"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss_epoch")
    assert [e.step for e in losses] == list(range(2500))
    assert losses[-1].value == pytest.approx(1 / 2500)
    assert [e.value for e in acc.Scalars("x-axis/epoch")][-1] == 2499
