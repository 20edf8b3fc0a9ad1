"""Every integer key takes a whole number in its range, or is refused in one line.

The class of input (``true``, ``false``, a fraction, a word, a number below the range)
is drawn for every integer key reglab knows, through Hydra's compose API into the same
``checks.check`` the commands run before anything is written. Each set of config groups is
composed once; each drawn value is then parsed by Hydra's own override grammar and set
where Hydra sets it, which is what composing ``key=value`` does to a composed config.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import compose_config, run_cli, script
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf, open_dict

from reglab.config import checks
from reglab.errors import ConfigError

#: The config groups that hold each key (the default config holds the rest).
_GROUPS = {
    "optimizer.max_iter": ["optimizer=lbfgs"],
    "optimizer.history_size": ["optimizer=lbfgs"],
    "scheduler.frequency": ["scheduler=step"],
    "scheduler.scheduler.step_size": ["scheduler=step"],
    "scheduler.scheduler.patience": ["scheduler=plateau"],
    "tuner.lr_find.num_training": ["tuner=lr_find"],
    "model.degree": ["model=polynomial"],
    "data.source.num_samples": ["data=linear"],
}
_KEYS = sorted([*checks._WHOLE_NUMBERS,
                *(f"callbacks.model_checkpoint.{k}" for k in ("save_top_k",))])
_VALUES = ["true", "false", "-2", "-1", "0", "1", "2", "3", "1.5", "'x'", "null", "1e3"]
_BASES: dict[tuple[str, ...], DictConfig] = {}


def _composed(groups: list[str], key: str, value: str, run_dir: Path) -> DictConfig:
    """``groups`` plus ``key=value`` as ``reglab-train`` composes them: the groups composed
    once, the value parsed by Hydra's override grammar (``true`` a bool, ``1e3`` a float,
    ``'x'`` a string) and set at ``key``, added where the YAML lacks it as ``+key`` does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if tuple(groups) not in _BASES:
        _BASES[tuple(groups)] = compose_config(list(groups), run_dir)
    cfg = copy.deepcopy(_BASES[tuple(groups)])
    parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, parsed, merge=False, force_add=True)
    return cfg


@settings(max_examples=50, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate])
@given(key=st.sampled_from(_KEYS), value=st.sampled_from(_VALUES))
def test_every_integer_key_takes_a_whole_number_in_range_or_one_line(tmp_path_factory,
                                                                    key: str, value: str):
    cfg = _composed(_GROUPS.get(key, []), key, value, tmp_path_factory.getbasetemp())
    given_value = OmegaConf.select(cfg, key)
    least, also, optional, _ = checks._WHOLE_NUMBERS.get(
        key, checks._CALLBACK_WHOLE_NUMBERS.get(key.rsplit(".", 1)[-1]))
    try:
        checks.check(cfg)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text
        ok = checks.is_whole(given_value, least, also) or (given_value is None and optional)
        assert not ok, f"{key}={value} refused: {text}"
        return
    assert checks.is_whole(given_value, least, also) or (given_value is None and optional), \
        f"{key}={value} accepted as {given_value!r}"


@pytest.mark.parametrize("args, line", [
    (["data.batch_size=true"], "data.batch_size: expected a whole number > 0, or null for "
     "full batch, got True"),
    (["trainer.log_every_n_steps=false"], "trainer.log_every_n_steps: expected a whole "
     "number >= 1, got False"),
    (["data=csv", "data.source.path=t.csv", "data.source.target=y",
      "data.standardize_target=yes"], "data.standardize_target: expected true or false, "
     "got 'yes'"),
    (["test=2"], "test: expected true or false, got 2"),
    (["+trainer.limit_train_batches=true"], "trainer.limit_train_batches: expected a "
     "number >= 0 (a whole number counts batches, a fraction a share), got True"),
])
def test_true_is_not_a_whole_number_on_the_command_line(tmp_path: Path, args, line):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n2,4\n3,6\n")
    out = run_cli([script("reglab-train"), *args, "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"reglab-train: error: {line}"
    assert not (tmp_path / "run").exists()


_FLAG_GROUPS = {"data.standardize": ["data=csv"], "data.standardize_target": ["data=csv"],
                "data.shuffle": ["data=csv"], "trainer.sync_batchnorm": ["trainer=ddp"]}
_FLAGS = sorted(k for k in checks._BOOLEANS if k != "allow_changed_data")
_FLAG_VALUES = ["true", "false", "0", "1", "2", "yes", "'no'", "null", "warn", "0.5"]


@settings(max_examples=40, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate])
@given(key=st.sampled_from(_FLAGS), value=st.sampled_from(_FLAG_VALUES))
def test_every_boolean_key_takes_true_or_false_or_one_line(tmp_path_factory, key: str,
                                                           value: str):
    run_dir = tmp_path_factory.getbasetemp()
    groups = _FLAG_GROUPS.get(key, [])
    if key.startswith("data."):
        table = run_dir / "whole_numbers_table.csv"
        if not table.exists():
            table.write_text("x,y\n1,2\n2,4\n3,6\n4,8\n5,10\n")
        groups = [*groups, f"data.source.path={table}", "data.source.target=y"]
    cfg = _composed(groups, key, value, run_dir)
    given_value = OmegaConf.select(cfg, key)
    allowed = checks._BOOLEANS[key]
    ok = isinstance(given_value, bool) or given_value in allowed
    try:
        checks.check(cfg)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert not ok and str(exc).startswith(f"{key}: expected true"), str(exc)
        return
    assert ok, f"{key}={value} accepted as {given_value!r}"
