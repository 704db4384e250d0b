"""A run that cannot succeed fails in one line, and a run that fails leaves nothing misleading:
ranges of every config number, empty config files, and run folders of runs that never took a
step."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_MODELS, config_for
from torch.optim.optimizer import register_optimizer_step_pre_hook

import envs
import il.train
from il.config import Limits, check_limits, field_limits, limits
from il.experiments import EXPERIMENTS, ExperimentError, load, make_config
from il.policies import registry
from il.policies.base import CheckpointError
from il.record import record_expert
from il.train import ConfigError, DataConfig, TrainConfig, load_config, train

IL = [sys.executable, "-m", "il.cli"]


def run_il(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [*IL, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


# --- ranges --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=0", "train.steps must be an integer >= 1, got 0"),
        ("train.steps=-5", "train.steps must be an integer >= 1, got -5"),
        ("train.lr=nan", "train.lr must be a finite number > 0, got nan"),
        ("train.lr=inf", "train.lr must be a finite number > 0, got inf"),
        ("train.batch_size=0", "train.batch_size must be an integer >= 1, got 0"),
        ("train.ema_decay=1", "train.ema_decay must be a finite number >= 0 and < 1, got 1.0"),
        ("train.log_every=0", "train.log_every must be an integer >= 1, got 0"),
        ("train.seed=-1", "train.seed must be an integer >= 0, got -1"),
        ("data.memory_gb=-1", "data.memory_gb must be a finite number >= 0, got -1.0"),
        ("model.hidden=[64,0]", "model.hidden must be a list of integers >= 1, got [64, 0]"),
        ("model.dropout=1", "model.dropout must be a finite number >= 0 and < 1, got 1.0"),
        ("model.temporal_ensemble=nan", "model.temporal_ensemble must be a finite number, got nan"),
    ],
)
def test_a_number_out_of_range_is_one_line_naming_key_value_and_range(
    store_path, override, message
):
    with pytest.raises(ConfigError) as e:
        load_config("bc", None, [f"data.path={store_path}", override])
    assert str(e.value) == message


def test_a_bound_may_name_another_field():
    with pytest.raises(ConfigError) as e:
        load_config("diffusion", None, ["model.train_steps=20", "model.inference_steps=21"])
    assert str(e.value) == (
        "model.inference_steps must be an integer >= 1 and <= model.train_steps (20), got 21"
    )


def test_cli_refuses_bad_numbers_before_it_creates_anything(store_path, tmp_path):
    for override, message in [
        ("train.steps=-5", "train.steps must be an integer >= 1, got -5"),
        ("train.lr=nan", "train.lr must be a finite number > 0, got nan"),
    ]:
        out = tmp_path / override.replace("=", "_")
        proc = run_il("train", "--data", store_path, "--out", str(out), override)
        assert one_line_error(proc) == f"error: {message}"
        assert not out.exists()


def test_configs_built_in_code_are_checked_by_train(store_path, tmp_path):
    config = config_for(store_path, tmp_path / "run")
    config.train.batch_size = 0  # e.g. a pipeline that assembles its own TrainConfig
    with pytest.raises(ConfigError, match=r"train\.batch_size must be an integer >= 1, got 0"):
        train(config)
    assert not (tmp_path / "run").exists()


NUMBERS_WITHOUT_LIMITS = {
    "n_action_steps": "between 1 and action_horizon, checked by the policy base",
    "temporal_ensemble": "any finite weight",
    "noise_scale": "checked by the diffusion policy (>= 0)",
    "cond_hidden": "checked by the diffusion policy (widths >= 1)",
}
"""Numeric fields of a method's config that have no `limits`, and why."""


def _numeric_fields(cls: type) -> list[dataclasses.Field]:
    return [
        f
        for f in dataclasses.fields(cls)
        if any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)
    ]


def _config_class(name: str) -> type:
    from il.methods.id_pretraining import pipeline

    if name in registry.METHODS:
        return registry.policy_class(name).Config
    if name in EXPERIMENTS:
        return load(name).Config
    return {"pretrain": pipeline.PretrainConfig, "fewshot": pipeline.FewShotConfig}[name]


@pytest.mark.parametrize(
    "name", ["train", "data", *registry.METHODS, *EXPERIMENTS, "pretrain", "fewshot"]
)
def test_every_number_of_every_config_has_a_range(name):
    cls = {"train": TrainConfig, "data": DataConfig}.get(name) or _config_class(name)
    unbounded = [
        f.name
        for f in _numeric_fields(cls)
        if field_limits(cls, f.name) == Limits()
        and f.name not in NUMBERS_WITHOUT_LIMITS
        and f.name != "episodes"  # store indices: checked against the store
    ]
    assert unbounded == [], f"{cls.__name__}: give these fields limits(...)"


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_every_method_refuses_a_number_below_its_range(store_path, method):
    config = registry.policy_class(method).Config
    load_config(method, None)  # its defaults are in range
    for f in _numeric_fields(config):
        bound = f.metadata.get("limits")
        if bound is None or isinstance(bound.at_least, str) or bound.at_least is None:
            continue
        below = f"[{bound.at_least - 1}]" if "list" in str(f.type) else str(bound.at_least - 1)
        with pytest.raises(ConfigError, match=rf"^model\.{f.name} must be "):
            load_config(method, None, [f"model.{f.name}={below}"])


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_configs_refuse_bad_numbers(name):
    module = load(name)
    with pytest.raises(ExperimentError, match=r"^seeds must be an integer >= 1, got 0$"):
        make_config(module, ["seeds=0"])
    with pytest.raises(ExperimentError, match=r"^threads must be an integer >= 0, got -1$"):
        make_config(module, ["threads=-1"])


def test_limits_of_a_base_class_hold_where_a_subclass_changes_the_default():
    @dataclasses.dataclass
    class Base:
        horizon: int = dataclasses.field(default=1, metadata=limits(at_least=1))

    @dataclasses.dataclass
    class Longer(Base):
        horizon: int = 4

    with pytest.raises(ValueError, match="horizon must be an integer >= 1, got 0"):
        check_limits(Longer(horizon=0))
    with pytest.raises(ConfigError, match=r"^model\.obs_horizon must be an integer >= 1"):
        load_config("diffusion", None, ["model.obs_horizon=0"])  # diffusion's default is 2


def test_acting_overrides_are_range_checked(store_path, tmp_path):
    tiny = ["train.steps=2", "train.save_every=2"]
    last = train(config_for(store_path, tmp_path / "dp", *tiny, policy="diffusion"))
    for item, message in [
        ("model.noise_scale=nan", "model.noise_scale must be a finite number, got nan"),
        ("model.inference_steps=0", "model.inference_steps must be an integer >= 1 and <="),
        ("model.eta=2", "model.eta must be a finite number >= 0 and <= 1, got 2.0"),
    ]:
        with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
            registry.load_policy(last, acting=[item])


# --- empty config files --------------------------------------------------------------------------
def test_an_empty_config_file_is_one_line_naming_it(store_path, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    with pytest.raises(ConfigError, match=f"config {empty} is empty"):
        load_config(None, empty)
    proc = run_il(
        "train", "--config", str(empty), "--data", store_path, "--out", str(tmp_path / "a")
    )
    assert f"config {empty} is empty" in one_line_error(proc)
    assert not (tmp_path / "a").exists()
    # configs/<policy>.yaml, which `il train --policy` reads by default
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bc.yaml").write_text("")
    proc = run_il("train", "--data", store_path, "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert "config configs/bc.yaml is empty" in one_line_error(proc)
    assert not (tmp_path / "b").exists()


def test_an_empty_file_is_refused_by_every_verb_that_reads_yaml(tmp_path):
    from il.methods.id_pretraining.pipeline import PretrainConfig, PretrainError, load_options

    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(PretrainError, match="is empty"):
        load_options(PretrainConfig, tmp_path / "empty.yaml", [])


# --- run folders of runs that fail ---------------------------------------------------------------
@pytest.fixture(scope="module")
def image_store(tmp_path_factory) -> str:
    """A camera store: its images are read only when batches are drawn, not when the run is
    prepared, so damage there shows at the first step."""
    path = str(tmp_path_factory.mktemp("images") / "demos.zarr")
    suite = envs.suite("metaworld/MT10")
    one = type(suite)(suite.name, suite.split, suite.tasks[:1])
    record_expert(
        one, path, episodes_per_task=2, obs=("state", "image/corner"), image_size=16,
        max_episode_steps=20, workers=1,
    )  # fmt: skip
    return path


def _damaged_copy(store: str, to: Path) -> str:
    import shutil

    shutil.copytree(store, to)
    chunks = [p for p in (to / "data" / "obs" / "image" / "corner").rglob("*") if p.is_file()]
    for chunk in chunks:
        if chunk.name != "zarr.json":
            chunk.write_bytes(b"\x00 not a compressed chunk \xff" * 8)
    return str(to)


def _image_run(store: str, out: Path, *overrides: str):
    return config_for(
        store, out, "data.obs=[obs/state,obs/image/corner]", "data.only_success=false",
        "data.memory_gb=0", "train.val_fraction=0", "model.image_features=8",
        "model.image_channels=[8,8]", "train.batch_size=4", *overrides,
    )  # fmt: skip


class _FailsAtFirstStep:
    """An error as the optimizer is about to take a run's first step, as a device that runs
    out of memory raises it."""

    def __enter__(self) -> _FailsAtFirstStep:
        self.handle = register_optimizer_step_pre_hook(self._fail)
        return self

    @staticmethod
    def _fail(*args: object) -> None:
        raise RuntimeError("out of memory at the first step")

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(image_store, tmp_path):
    out = tmp_path / "runs" / "fresh"
    with _FailsAtFirstStep(), pytest.raises(RuntimeError, match="out of memory"):
        train(_image_run(image_store, out))
    assert not out.exists() and not out.parent.exists()
    # A folder that was there before keeps what the user put in it, and gains nothing.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with _FailsAtFirstStep(), pytest.raises(RuntimeError, match="out of memory"):
        train(_image_run(image_store, mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # Damaged data is refused before anything is made (the store's checksums and decode check).
    damaged = _damaged_copy(image_store, tmp_path / "damaged.zarr")
    with pytest.raises(ConfigError, match="is damaged"):
        train(_image_run(damaged, out))
    assert not out.parent.exists()
    # The store itself trains (it is the error that stopped the runs).
    assert (
        train(_image_run(image_store, tmp_path / "ok", "train.steps=2")) / "policy.json"
    ).exists()


class _CtrlC:
    """A real SIGINT, delivered as the optimizer is about to take a run's first step."""

    def __enter__(self) -> _CtrlC:
        # Python's own Ctrl-C handler, whatever this process inherited: a shell starts its
        # background jobs with SIGINT ignored, and then no signal would interrupt anything.
        self.previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.handle = register_optimizer_step_pre_hook(
            lambda *args: signal.raise_signal(signal.SIGINT)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()
        signal.signal(signal.SIGINT, self.previous)


def test_ctrl_c_before_the_first_step_leaves_no_folder(store_path, tmp_path):
    out = tmp_path / "run"
    with _CtrlC(), pytest.raises(KeyboardInterrupt):
        train(config_for(store_path, out, "train.val_at_start=true"))
    assert not out.exists()


def test_a_resumed_run_interrupted_before_its_first_step_keeps_its_folder_as_it_was(
    store_path, tmp_path
):
    out = tmp_path / "run"
    train(config_for(store_path, out, "train.steps=20"))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    resumed = config_for(store_path, out, "train.steps=40", "train.lr=0.002")
    with _CtrlC(), pytest.raises(KeyboardInterrupt):
        train(resumed, resume=True)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # config.yaml still says lr 0.001; no new TensorBoard file
    last = train(resumed, resume=True)  # and it resumes from there
    assert last.name == "step_0000040"


def test_a_run_that_fails_after_a_checkpoint_keeps_it(store_path, tmp_path):
    def fail(step: int, metrics: dict) -> None:
        if step == 30:
            raise OSError(errno.EIO, "the data went away")

    out = tmp_path / "run"
    with pytest.raises(OSError):
        train(config_for(store_path, out), on_step=fail)
    assert (out / "checkpoints" / "last").resolve().name == "step_0000020"
    assert registry.load_policy(out).config.hidden == [64, 64]
    assert (out / "config.yaml").exists() and (out / "metrics.csv").exists()


def test_a_full_disk_as_the_run_folder_is_written_removes_what_it_wrote(
    store_path, tmp_path, monkeypatch
):
    real_open = open

    def full_disk(path, *args, **kwargs):
        if str(path).endswith("metrics.csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(il.train, "open", full_disk, raising=False)
    out = tmp_path / "new" / "run"
    with pytest.raises(OSError, match="No space left"):
        train(config_for(store_path, out))
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OSError, match="No space left"):
        train(config_for(store_path, mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_resume_with_no_steps_left_is_one_line(store_path, tmp_path):
    out = tmp_path / "run"
    train(config_for(store_path, out, "train.steps=20"))
    saved = (out / "config.yaml").read_text()
    for steps in (20, 10):
        with pytest.raises(ConfigError, match=f"has already taken 20 steps, train.steps={steps}"):
            train(config_for(store_path, out, f"train.steps={steps}"), resume=True)
    assert (out / "config.yaml").read_text() == saved
    proc = run_il("train", "--resume", "--out", str(out), "train.steps=20")
    assert "give train.steps above 20" in one_line_error(proc)
    assert json.loads((out / "checkpoints" / "last" / "policy.json").read_text())["policy"] == "bc"
    assert TINY_MODELS["bc"]  # the run above is the tiny BC of conftest
