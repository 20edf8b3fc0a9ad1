"""A run dir holds one run, and no command removes or changes what the user had.

The guard is tested as a class: random trees of the user's files, folders and links
around and inside the target dir, a simulated command writing what Hydra and reglab
write, then the rejection's clean-up or the accepted command's overwrite; every entry
that existed before is checked byte for byte. The real commands are then run on the
cases the issue names: a symlinked run dir, a symlinked parent, a dangling link, a link
to the launch dir, and a second run into a run dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest
from conftest import run_cli, script, start_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from reglab.cli.run_guard import RunDirGuard, SetAside
from reglab.run_files import RESULTS, is_own

# -- the class: random trees, simulated commands ---------------------------------------

#: Names a user's tree is drawn from: some are names reglab writes, some are not.
_NAMES = ["notes.txt", "data.csv", "metrics.json", "model.pt", "train.log", ".hydra",
          "checkpoints", "tensorboard", "fit.png", "sub", "keep", "config.yaml", "last.ckpt"]


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root`` as (kind, content): files by hash, links by target;
    links are never followed."""
    out: dict[str, tuple[str, str]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(kind, path, payload) entries to lay out under a scratch root holding ``user/``
    (the user's folder) and the run dir ``target`` somewhere in it."""
    entries = []
    for _ in range(draw(st.integers(0, 14))):
        where = draw(st.sampled_from(["user", "user/sub", "target", "target/.hydra",
                                      "target/checkpoints", "target/tensorboard", "outside"]))
        name = draw(st.sampled_from(_NAMES))
        kind = draw(st.sampled_from(["file", "file", "dir", "link_file", "link_dir",
                                     "dangling"]))
        entries.append((kind, f"{where}/{name}", draw(st.binary(max_size=20)).hex()))
    return entries


def lay_out(root: Path, entries: list[tuple[str, str, str]], target_kind: str) -> Path:
    """The tree under ``root``; returns the run dir as a command would name it."""
    (root / "user").mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "victim.txt").write_text("not reglab's")
    if target_kind == "dir":
        (root / "target").mkdir()
    elif target_kind == "link_to_user":  # hydra.run.dir=link, link -> the user's folder
        (root / "target").symlink_to(root / "user", target_is_directory=True)
    elif target_kind == "link_to_dot":  # a link to the launch dir
        (root / "target").symlink_to(".", target_is_directory=True)
    elif target_kind == "link_parent":  # hydra.run.dir=plink/run, plink -> user/
        (root / "plink").symlink_to(root / "user", target_is_directory=True)
        (root / "user" / "run").mkdir()
    for kind, rel, payload in entries:
        path = root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "file":
                path.write_text(payload)
            elif kind == "dir":
                path.mkdir()
                (path / "inner.txt").write_text(payload)
            elif kind == "link_file":
                path.symlink_to(root / "outside" / "victim.txt")
            elif kind == "link_dir":
                path.symlink_to(root / "outside", target_is_directory=True)
            else:
                path.symlink_to(root / "nowhere" / payload)
        except OSError:
            continue  # e.g. a parent that is a file or a link: that entry is skipped
    if target_kind == "link_parent":
        return root / "plink" / "run"
    if target_kind == "missing":
        return root / "new" / "deeper" / "run"
    return root / "target"


def simulate_command(run_dir: Path) -> None:
    """What Hydra and reglab write before a command can be rejected: the run dir and
    ``.hydra/`` created, its files written (through whatever is there), the log
    appended, a failure record and a checkpoint folder."""
    def attempt(action) -> None:
        # Where Hydra would fail too (a file in the way), the guard must cope either way.
        with contextlib.suppress(OSError):
            action()

    attempt(lambda: run_dir.mkdir(parents=True, exist_ok=True))
    attempt(lambda: (run_dir / ".hydra").mkdir(exist_ok=True))
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        attempt(lambda n=name: (run_dir / ".hydra" / n).write_text(f"new {n}"))

    def append_log() -> None:
        with (run_dir / "train.log").open("a") as log:
            log.write("a new line\n")

    attempt(append_log)
    def write_record() -> None:  # reglab's atomic write: a new file renamed over the old
        tmp = run_dir / ".metrics.json.tmp-1"
        tmp.write_text('{"status": "failed"}')
        os.replace(tmp, run_dir / "metrics.json")

    attempt(write_record)
    attempt(lambda: (run_dir / "checkpoints").mkdir(exist_ok=True))
    attempt(lambda: (run_dir / "checkpoints" / ".last.ckpt.tmp").write_text("x"))
    attempt(lambda: (run_dir / "tensorboard" / "v").mkdir(parents=True, exist_ok=True))


_TARGETS = ["dir", "link_to_user", "link_to_dot", "link_parent", "missing"]


def unchanged(before: dict, after: dict, root: Path) -> None:
    """Every entry that existed is as it was; a new one may only have been written
    through one of the user's links to a folder (as Hydra writes ``.hydra/`` through
    one), so it lies where that link points, never in the run dir itself."""
    assert {rel: after.get(rel) for rel in before} == before
    real_root = os.path.realpath(root)
    through = [os.path.relpath(os.path.realpath(root / rel), real_root)
               for rel, (kind, _) in before.items() if kind == "link"]
    for rel in set(after) - set(before):
        assert any(rel.startswith(folder + os.sep) for folder in through), rel


def within(rel: str, prefix: str) -> str | None:
    """``rel`` below the run dir ``prefix`` (both relative to the scratch root)."""
    if prefix == ".":
        return rel
    return rel[len(prefix) + 1:] if rel.startswith(prefix + os.sep) else None


@settings(max_examples=60, deadline=None)
@given(entries=trees(), target_kind=st.sampled_from(_TARGETS))
def test_a_rejected_command_leaves_every_entry_as_it_was(tmp_path_factory, entries,
                                                         target_kind):
    root = tmp_path_factory.mktemp("tree")
    run_dir = lay_out(root, entries, target_kind)
    before = snapshot(root)
    guard = RunDirGuard(run_dir)
    simulate_command(run_dir)
    guard.restore(run_dir)
    unchanged(before, snapshot(root), root)


@settings(max_examples=40, deadline=None)
@given(entries=trees(), target_kind=st.sampled_from(_TARGETS[:4]), accepted=st.booleans())
def test_overwrite_replaces_only_the_old_runs_results(tmp_path_factory, entries,
                                                      target_kind, accepted):
    root = tmp_path_factory.mktemp("tree")
    run_dir = lay_out(root, entries, target_kind)
    real = Path(os.path.realpath(run_dir))
    prefix = os.path.relpath(real, os.path.realpath(root))
    before = snapshot(root)
    aside = SetAside(run_dir)
    assert not any(os.path.lexists(real / name) for name in RESULTS)
    if not accepted:
        aside.restore()
        assert snapshot(root) == before
        return
    aside.discard()
    # The old run's results are gone; everything else is as it was.
    results = {rel for rel in before
               if (rest := within(rel, prefix)) is not None and rest.split(os.sep)[0] in RESULTS}
    assert snapshot(root) == {rel: v for rel, v in before.items() if rel not in results}


def test_own_names_are_what_reglab_writes():
    for name in (".hydra", "train.log", "eval.log", "metrics.json", "model.pt",
                 "checkpoints", "tensorboard", "fit.png", ".metrics.json.tmp-12"):
        assert is_own(name), name
    for name in ("notes.txt", "data.csv", "mine", "my.png.bak"):
        assert not is_own(name), name


# -- the real commands ------------------------------------------------------------------

_BAD_CSV = "x,y\n1,2\n2,nan\n3,4\n"


def _user_tree(root: Path) -> Path:
    folder = root / "userfolder"
    (folder / "deep").mkdir(parents=True)
    (folder / "notes.txt").write_text("notes\n")
    (folder / "deep" / "data.csv").write_text("a,b\n1,2\n")
    (folder / "train.log").write_text("the user's own log\n")
    (folder / "to_outside").symlink_to(root / "bad.csv")
    return folder


@pytest.mark.parametrize("form", ["run_dir_link", "parent_link", "link_to_dot"])
def test_a_rejected_run_through_links_keeps_the_users_files(tmp_path: Path, form: str):
    (tmp_path / "bad.csv").write_text(_BAD_CSV)
    folder = _user_tree(tmp_path)
    if form == "run_dir_link":
        (tmp_path / "link").symlink_to("userfolder")
        run_dir = "link"
    elif form == "parent_link":
        (tmp_path / "plink").symlink_to("userfolder")
        run_dir = "plink/deep"
    else:
        (folder / "dot").symlink_to(".")
        run_dir = "userfolder/dot"
    before = snapshot(tmp_path)
    out = run_cli([script("reglab-train"), "data=csv", "data.source.path=bad.csv",
                   "data.source.target=y", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("reglab-train: error: bad.csv, line 3")
    assert snapshot(tmp_path) == before


def test_a_dangling_run_dir_link_is_one_line_and_creates_nothing(tmp_path: Path):
    (tmp_path / "dangling").symlink_to("nowhere/at/all")
    before = snapshot(tmp_path)
    out = run_cli([script("reglab-train"), "hydra.run.dir=dangling"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("reglab-train: error: hydra.run.dir: dangling is a link to "
                                  "nowhere/at/all, which does not exist; create that folder "
                                  "or name another run dir")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_second_run_into_a_run_dir_is_refused_and_overwrite_replaces_it(tmp_path: Path):
    args = [script("reglab-train"), "experiment=noisy_line", "hydra.run.dir=ow"]
    first = run_cli([*args, "trainer.max_epochs=3"], tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "ow" / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)

    second = run_cli([*args, "trainer.max_epochs=5", "optimizer.lr=0.02"], tmp_path)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        "reglab-train: error: hydra.run.dir: ow already holds a reglab run (metrics.json: "
        "completed); continue it with resume=ow, name another hydra.run.dir, or replace "
        "that run's files with overwrite=true (other files there are left alone)")
    assert snapshot(tmp_path) == before  # byte for byte: nothing was written

    third = run_cli([*args, "trainer.max_epochs=5", "optimizer.lr=0.02", "overwrite=true"],
                    tmp_path)
    assert third.returncode == 0, third.stderr
    run = tmp_path / "ow"
    assert (run / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best-epoch0004.ckpt", "last.ckpt"]
    # One run's events: every event file written by the one process that trained.
    pids = {p.name.split(".")[4] for p in (run / "tensorboard").glob("events.out.*")}
    assert len(pids) == 1
    assert not list(run.glob(".reglab-replaced-*"))
    import json

    assert json.loads((run / "metrics.json").read_text())["epochs"] == 5

    # The ways on stay open: resume= and ckpt_path=last continue the run in its dir.
    resumed = run_cli([script("reglab-train"), "resume=ow", "trainer.max_epochs=6"],
                      tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 6


def test_an_overwrite_that_is_rejected_puts_the_old_run_back(tmp_path: Path):
    run = tmp_path / "ow"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "completed"}')
    (run / "checkpoints" / "last.ckpt").write_bytes(b"old")
    (run / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    out = run_cli([script("reglab-train"), "hydra.run.dir=ow", "overwrite=true",
                   "optimizer.lr=-1"], tmp_path)
    assert out.returncode == 2
    assert "optimizer.lr" in out.stderr
    assert snapshot(tmp_path) == before


def test_eval_and_predict_do_not_write_over_what_exists(tmp_path: Path):
    run = tmp_path / "trained"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "completed"}')
    before = snapshot(tmp_path)
    into_run = run_cli([script("reglab-eval"), "ckpt_path=trained/model.pt",
                        "hydra.run.dir=trained", "overwrite=true"], tmp_path)
    assert into_run.returncode == 2
    assert into_run.stderr.strip() == (
        "reglab-eval: error: hydra.run.dir: trained already holds a reglab run (metrics.json:"
        " completed); reglab-eval writes into a dir of its own: name another hydra.run.dir")
    assert snapshot(tmp_path) == before

    (tmp_path / "in.csv").write_text("x\n1\n")
    (tmp_path / "out.csv").write_text("the user's\n")
    for extra, message in (
            ([], "output_path: out.csv already exists; name another file, or replace it "
                 "with overwrite=true"),
            (["overwrite=true", "output_path=in.csv"],
             "output_path: in.csv is the input table itself; name another file")):
        out = run_cli([script("reglab-predict"), "ckpt_path=trained/model.pt",
                       "input_path=in.csv", "output_path=out.csv", *extra], tmp_path)
        assert out.returncode == 2
        assert out.stderr.strip() == f"reglab-predict: error: {message}"
    assert (tmp_path / "out.csv").read_text() == "the user's\n"


def test_a_sweep_into_a_sweeps_dir_is_refused(tmp_path: Path):
    (tmp_path / "sw" / "0").mkdir(parents=True)
    (tmp_path / "sw" / "0" / "metrics.json").write_text('{"status": "completed"}')
    before = snapshot(tmp_path)
    out = run_cli([script("reglab-train"), "-m", "hydra.sweep.dir=sw",
                   "optimizer.lr=0.1,0.2"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "reglab-train: error: hydra.sweep.dir: sw already holds a sweep (job 0: a reglab run "
        "(metrics.json: completed)); name another hydra.sweep.dir (reglab-sweep-report "
        "rebuilds the old sweep's report)")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_second_command_in_a_busy_run_dir_is_refused_and_a_stale_lock_taken_over(
        tmp_path: Path):
    import signal
    import time

    busy = start_cli(
        [script("reglab-train"), "experiment=noisy_line", "trainer.max_epochs=100000",
         "callbacks.last_checkpoint.every_seconds=0", "hydra.run.dir=busy"], tmp_path)
    lock, last = tmp_path / "busy" / ".reglab.lock", tmp_path / "busy/checkpoints/last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not (last.is_file() and lock.is_file()) and time.monotonic() < deadline:
            assert busy.poll() is None, busy.output()
            time.sleep(0.2)
        assert lock.read_text().strip() == str(busy.pid)
        for args in (["resume=busy"], ["hydra.run.dir=busy", "ckpt_path=last"]):
            out = run_cli([script("reglab-train"), *args, "trainer.max_epochs=100001"],
                          tmp_path)
            assert out.returncode == 2, out.stderr
            assert out.stderr.strip() == (
                f"reglab-train: error: hydra.run.dir: {tmp_path / 'busy'} is in use by "
                f"process {busy.pid} (a run or resume still going); wait for it to end, or "
                "stop it first")
    finally:
        busy.send_signal(signal.SIGTERM)
        busy.communicate(timeout=60)
    assert busy.returncode == 143
    assert not lock.exists()  # removed by its owner at exit

    # A lock left by a process that is gone (kill -9) holds no lock: taken over.
    done = run_cli([script("reglab-train"), "experiment=origin", "logger=none",
                    "callbacks.plots=null", "hydra.run.dir=done"], tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "done" / ".reglab.lock").write_text("999999\n")
    out = run_cli([script("reglab-train"), "resume=done", "trainer.max_epochs=110"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "done" / ".reglab.lock").exists()


def test_a_resume_asking_fewer_epochs_than_done_leaves_the_run_as_it_was(tmp_path: Path):
    """Lightning refuses it only after restoring the checkpoint; reglab refuses it
    before, in one line, and the completed run stays byte for byte."""
    out = run_cli([script("reglab-train"), "experiment=noisy_line", "trainer.max_epochs=3",
                   "logger=none", "callbacks.plots=null", "hydra.run.dir=done"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    before = snapshot(tmp_path / "done")
    out = run_cli([script("reglab-train"), "resume=done", "trainer.max_epochs=2"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    ckpt = tmp_path / "done" / "checkpoints" / "last.ckpt"
    assert out.stderr.strip().splitlines()[-1] == (
        f"reglab-train: error: trainer.max_epochs: 2, but {ckpt} has already trained 3 "
        "epochs; give trainer.max_epochs=4 or more to train it further")
    assert snapshot(tmp_path / "done") == before


def test_a_forked_child_does_not_keep_a_dead_runs_lock(tmp_path: Path):
    """A process forked by the run (a loader worker) outlives a kill -9 of it: the run
    dir's lock must go with the run, not stay held by the child, or resume= is refused."""
    import os
    import signal
    import time

    from reglab.cli.run_guard import RunLock

    lock = RunLock(tmp_path)
    lock.acquire()
    ready, told = os.pipe()
    child = os.fork()
    if child == 0:  # the worker (its fork handlers have run): lives on
        os.write(told, b"1")
        time.sleep(30)
        os._exit(0)
    os.read(ready, 1)
    try:
        os.close(lock.fd)  # the run dies (the kernel closes its descriptors)
        lock.fd = None
        again = RunLock(tmp_path)
        again.acquire()  # taken while the child still lives
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
