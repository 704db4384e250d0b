"""The `il` command line: one verb per step of the loop.

Errors a user can fix (an unknown name, a bad number, a missing file) are printed as one line
that says what is wrong and how to fix it; tracebacks are for bugs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from il.experiments import EXPERIMENTS
from il.policies.registry import METHODS

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A mistake in the command's input; printed as one line, exit status 2."""


@click.group(
    name="il",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="il")
def app() -> None:
    """Robot imitation learning: record, store, train, evaluate, deploy, fine-tune."""


def _skip_damaged_option(what: str) -> Callable[[Callable], Callable]:
    """--skip-damaged, the same for every verb that reads recorded episodes: without it,
    episodes that do not read back as recorded are refused in one line naming them."""
    return click.option(
        "--skip-damaged",
        is_flag=True,
        help=f"Leave out damaged episodes (a chunk that does not decode, a checksum that does "
        f"not match) and {what}, saying how many were left out [default: refuse the store].",
    )


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _formatted_doc(**values: str) -> Callable[[Callable], Callable]:
    """Fill `{name}` fields of a verb's docstring (its --help) from tables, so the help names
    what exists rather than what existed when it was written."""

    def decorate(fn: Callable) -> Callable:
        fn.__doc__ = (fn.__doc__ or "").format(**values)
        return fn

    return decorate


def _rollout_options(episodes_per_task: int) -> Callable[[Callable], Callable]:
    """The options every verb that rolls episodes out shares, with the same names and meaning:
    --env, --tasks, --split, --task-seed, --episodes-per-task, --workers, --seed, --obs,
    --image-size, --max-episode-steps."""
    options = [
        click.option(
            "--env",
            default=None,
            help="Task or suite, e.g. metaworld/MT10 or metaworld/reach-v3 (`il envs` lists "
            "them) [default: metaworld/MT10; for --checkpoint, the tasks it was trained on].",
        ),
        click.option(
            "--tasks",
            default=None,
            help="Only these tasks of the suite, comma-separated, e.g. "
            "peg-insert-side-v3,reach-v3 (on the variations they have in the whole suite).",
        ),
        click.option(
            "--split",
            default="train",
            show_default=True,
            help="Suite split: train or test, where the suite has one (`il envs` lists them).",
        ),
        click.option(
            "--task-seed",
            type=click.IntRange(min=0, max=2**31 - 1),
            default=None,
            help="Benchmark seed that draws each task's variations (Meta-World: its 50 object "
            "and goal positions); another seed gives variations the default ones do not hold "
            "[default: 0; for --checkpoint, that of the demonstrations it learnt from].",
        ),
        click.option(
            "--episodes-per-task",
            type=click.IntRange(min=1),
            default=episodes_per_task,
            show_default=True,
            help="Episodes of each task of the suite.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            help="Worker processes [default: one per core].",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Episode k of each task is reset with seed + k.",
        ),
        click.option(
            "--obs",
            default=None,
            help="Observation keys, comma-separated, e.g. state,image/corner "
            "[default: the env family's, see `il envs`] (a checkpoint brings its own).",
        ),
        click.option(
            "--image-size",
            type=click.IntRange(min=8),
            default=84,
            show_default=True,
            help="Side of the square camera images, in pixels.",
        ),
        click.option(
            "--max-episode-steps",
            type=click.IntRange(min=1),
            default=None,
            help="Steps after which an episode is cut (truncated) [default: the env family's, "
            "see `il envs`].",
        ),
    ]
    return lambda command: functools.reduce(lambda f, option: option(f), reversed(options), command)


def _robot_options(robot_required: bool) -> Callable[[Callable], Callable]:
    """Options of every verb that drives a robot, with the same names and meaning."""
    options = [
        click.option(
            "--robot",
            required=robot_required,
            help="The robot: a name (sim:metaworld/pick-place-v3) or a YAML setup "
            "(configs/robots/sim-pick-place.yaml).",
        ),
        click.option(
            "--camera",
            multiple=True,
            help="A camera to record and feed the policy (repeat for several), e.g. corner.",
        ),
        click.option(
            "--hz",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Control rate [default: the setup's, else the robot's own rate].",
        ),
        click.option(
            "--safety",
            type=click.Path(path_type=str),
            default=None,
            help="Safety limits YAML [default: the setup's, else the robot's defaults].",
        ),
        click.option(
            "--teleop",
            default=None,
            help="Teleop device: keyboard, gamepad, spacemouse, or a YAML of its options "
            "(configs/teleop/keyboard.yaml; the device is the file's name unless the YAML "
            "gives `device`).",
        ),
        click.option(
            "--episodes",
            type=click.IntRange(min=1),
            default=None,
            help="Episodes to save before stopping [default: until the operator quits].",
        ),
        click.option(
            "--on-disconnect",
            type=click.Choice(["keep", "discard"]),
            default="keep",
            show_default=True,
            help="If the robot stops answering mid-episode: keep the steps recorded so far "
            "as an unsuccessful episode, or discard them.",
        ),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@app.command("eval")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="A run folder of `il train` (its latest checkpoint) or a checkpoint folder.",
)
@click.option(
    "--policy",
    type=click.Choice(["expert"]),
    default=None,
    help="Roll out the scripted experts instead of a checkpoint (the reference row).",
)
@_rollout_options(episodes_per_task=10)
@click.option(
    "--video",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for mp4s of the first episodes of each task.",
)
@click.option(
    "--video-episodes",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Episodes filmed per task.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write per-episode results as JSON here.",
)
@click.option(
    "--act-ahead",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Roll out as `il deploy --act-ahead` does: each chunk predicted this many steps "
    "before it is needed (measures what the later reaction costs).",
)
@click.option(
    "--intervene",
    default=None,
    help="A simulated person who corrects the policy: expert-motion (an rth policy, in words) "
    "or expert-takeover (any policy: the expert's actions).",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="--intervene steps in after this many steps of disagreement in a row...",
)
@click.option(
    "--hold",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="...for this many steps.",
)
@click.option(
    "--record",
    type=click.Path(path_type=str),
    default=None,
    help="Commit every episode to this DemoStore as it ends (with --intervene: the corrections, "
    "for il finetune); run again, it plays only the episodes the store lacks.",
)
@click.argument("acting", nargs=-1)
def eval_(
    checkpoint: Path | None,
    policy: str | None,
    env: str | None,
    tasks: str | None,
    split: str,
    task_seed: int | None,
    episodes_per_task: int,
    workers: int | None,
    seed: int,
    obs: str | None,
    image_size: int,
    max_episode_steps: int | None,
    video: Path | None,
    video_episodes: int,
    json_out: Path | None,
    act_ahead: int,
    intervene: str | None,
    patience: int,
    hold: int,
    record: str | None,
    acting: tuple[str, ...],
) -> None:
    """Roll a checkpoint (or the scripted experts) out on a suite; success per task.

    ACTING: model.key=value changes to how a trained policy acts, not to its weights, e.g.
    model.n_action_steps=4, model.inference_steps=16 or model.noise_scale=0.5 (the error lists
    what a method allows)."""
    from il.data.store import StoreError
    from il.evaluate import checkpoint_suite, evaluate, evaluate_checkpoint
    from il.interventions import InterveneSpec as spec_of
    from il.policies.base import CheckpointError, read_description, resolve_checkpoint
    from il.policies.expert import expert_for_task
    from il.policies.registry import check_acts

    if (checkpoint is None) == (policy is None):
        raise UserError("give either --checkpoint RUN_OR_CHECKPOINT or --policy expert")
    if acting and checkpoint is None:
        raise UserError(f"{acting[0]}: model.key=value changes a checkpoint; give --checkpoint")
    if (intervene or record) and checkpoint is None:
        raise UserError("--intervene and --record roll out a trained policy; give --checkpoint")
    names = _parse_tasks(tasks)  # an empty --tasks fails here, before any checkpoint is read
    common = dict(
        episodes_per_task=episodes_per_task,
        seed=seed,
        video_dir=video,
        video_episodes=video_episodes,
    )
    with _progress("eval") as bar:
        job = bar.add_task("", total=None, status="")
        common["on_episode"] = functools.partial(bar.advance, job)
        if checkpoint is not None:
            try:
                folder = resolve_checkpoint(checkpoint)
                learned = read_description(folder)
                check_acts(folder)
                spec = learned["spec"]
                chosen = checkpoint_suite(
                    spec["env"],
                    spec.get("tasks") or [],
                    suite=env,
                    split=split,
                    tasks=names,
                    task_seed=task_seed,
                )
                n_episodes = len(chosen.tasks) * episodes_per_task
                workers = workers or min(_cpu_count(), n_episodes)
                bar.update(
                    job, description=f"{learned['policy']} on {chosen.name}", total=n_episodes
                )
                cut = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
                report = evaluate_checkpoint(
                    folder,
                    suite=env,
                    split=split,
                    tasks=names,
                    task_seed=task_seed,
                    workers=workers,
                    act_ahead=act_ahead,
                    acting=acting,
                    intervene=None if intervene is None else (intervene, spec_of(patience, hold)),
                    record=record,
                    **common,
                    **cut,  # else the checkpoint's own episode length
                )
            except (CheckpointError, StoreError, ValueError) as e:
                raise UserError(str(e)) from None
            policy = learned["policy"]
        else:
            suite, keys = _suite_and_obs(env or "metaworld/MT10", split, obs, tasks, task_seed)
            workers = workers or min(_cpu_count(), len(suite.tasks) * episodes_per_task)
            bar.update(
                job,
                description=f"expert on {suite.name}",
                total=len(suite.tasks) * episodes_per_task,
            )
            report = evaluate(
                suite,
                expert_for_task,
                policy_name="expert",
                workers=workers,
                obs=keys,
                image_size=image_size,
                max_episode_steps=_max_steps(suite.name, max_episode_steps),
                **common,
            )
    table = Table(title=f"{policy} on {report.suite} ({episodes_per_task} episodes per task)")
    table.add_column("task")
    table.add_column("success", justify="right")
    table.add_column("mean length", justify="right")
    if intervene:
        table.add_column("corrected steps", justify="right")
    for t in report.tasks:
        counts = [f"{t.interventions}"] if intervene else []
        table.add_row(t.task, f"{100 * t.success_rate:.0f}%", f"{t.mean_length:.0f}", *counts)
    table.add_section()
    total = [f"[bold]{report.interventions}"] if intervene else []
    table.add_row("[bold]mean", f"[bold]{100 * report.success_rate:.1f}%", "", *total)
    console.print(table)
    console.print(
        f"{report.steps} steps in {report.seconds:.1f} s "
        f"({report.steps_per_second:.0f} steps/s, {workers} worker{'' if workers == 1 else 's'})"
    )
    played = report.variations()
    console.print(
        f"task seed {report.task_seed}, "
        + (f"variations {played} of each task" if played else "variations by task in --json"),
        highlight=False,
        soft_wrap=True,
    )
    if report.videos:
        console.print(f"videos: {len(report.videos)} mp4 in {video}")
    if json_out is not None:
        report.write_json(json_out)
        console.print(f"results: {json_out}")
    if record is not None:
        console.print(f"episodes: {record}")


@app.command("record")
@click.option(
    "--source",
    type=click.Choice(["expert", "human-proxy"]),
    default="expert",
    show_default=True,
    help="Who acts: the scripted experts; human-proxy stores their episodes as a video of a "
    "person's hand would show them (two views with the gripper recoloured, keypoints "
    "distorted and noisy, grasp read from the images; no state, no actions), source human.",
)
@click.option(
    "--human-video",
    type=click.Path(path_type=str),
    default=None,
    metavar="CLIP",
    help="Record a video of a person's hand instead: a clip folder (calibration.yaml, frames "
    "or an mp4 per camera, keypoints.npz) or a folder of them, as human episodes of the one "
    "task --tasks names (see the README's motion tracks).",
)
@click.option(
    "--hand",
    type=click.Choice(["right", "left"]),
    default="right",
    show_default=True,
    help="--human-video: the hand in the clips (puts the thumb on the gripper's left finger "
    "for a right hand).",
)
@click.option(
    "--proxy-noise",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="human-proxy: per-frame keypoint noise, pixels (a hand tracker's error).",
)
@_rollout_options(episodes_per_task=20)
@click.option(
    "--out",
    type=click.Path(path_type=str),
    required=True,
    help="The store: a local path (data/mt10.zarr) or an fsspec URL.",
)
@click.option(
    "--only-success",
    is_flag=True,
    help="Keep successful episodes only; try further seeds to reach the count.",
)
@click.option(
    "--steps-after-success",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Steps recorded after the first success.",
)
@click.option(
    "--full-episodes",
    is_flag=True,
    help="Record every episode to --max-episode-steps, ignoring success.",
)
@click.option(
    "--action-noise",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Std of Gaussian noise on the executed action (expert source, continuous actions); "
    "the store keeps the expert's action as `action` and the executed one as `executed_action`.",
)
@click.option(
    "--tracks",
    "track_cameras",
    default=None,
    metavar="CAMERA,CAMERA",
    help="The two cameras to record motion tracks in (the gripper's five points in each "
    "image and a grasp bit, keys track/*); 'none' for no tracks [default: the env family's "
    "pair (metaworld: corner,corner2); resuming, the store's].",
)
@_robot_options(robot_required=False)
def record(
    source: str,
    env: str,
    tasks: str | None,
    split: str,
    task_seed: int | None,
    episodes_per_task: int,
    obs: str | None,
    image_size: int,
    out: str,
    workers: int | None,
    seed: int,
    only_success: bool,
    steps_after_success: int,
    full_episodes: bool,
    action_noise: float,
    track_cameras: str | None,
    proxy_noise: float,
    human_video: str | None,
    hand: str,
    max_episode_steps: int | None,
    robot: str | None,
    camera: tuple[str, ...],
    hz: float | None,
    safety: str | None,
    teleop: str | None,
    episodes: int | None,
    on_disconnect: str,
) -> None:
    """Record demonstrations into a DemoStore (resumes into an existing one): from the
    scripted experts (or their episodes as a video of a hand, --source human-proxy), from clips
    of a person's hand (--human-video), or with --robot and --teleop from an operator driving
    a robot."""
    from il.data.store import StoreError
    from il.record import record_expert

    if robot is not None:
        if teleop is None:
            raise UserError("recording from --robot needs --teleop (keyboard, gamepad, spacemouse)")
        if task_seed is not None:
            raise UserError(
                "--task-seed is for recording the experts; a simulated robot takes `task_seed` "
                "among the options of its setup YAML"
            )
        from il.rig import RigError, make_rig

        try:
            rig = make_rig(
                robot, cameras=camera, image_size=image_size, hz=hz, safety=safety, teleop=teleop
            )
            with _status_line() as show:
                report = rig.run(
                    out=out,
                    episodes=episodes,
                    max_steps=max_episode_steps or 500,
                    wait_for_start=True,
                    on_disconnect=on_disconnect,
                    on_status=show,
                )
        except RigError as e:
            raise UserError(str(e)) from None
        _print_session(report, out, policy=False)
        return

    if human_video is not None:
        _record_human_video(human_video, out, tasks, image_size, hand)
        return
    suite, keys = _suite_and_obs(env or "metaworld/MT10", split, obs, tasks, task_seed)
    max_episode_steps = _max_steps(suite.name, max_episode_steps)
    workers = workers or _cpu_count()
    total = len(suite.tasks) * episodes_per_task
    counts = {"ok": 0, "failed": 0}
    with _progress("record") as bar:
        job = bar.add_task(f"{source} on {suite.name}", total=total, status="")

        def on_episode(task: str, success: bool) -> None:
            counts["ok" if success else "failed"] += 1
            bar.update(
                job, advance=1, status=f"{counts['ok']} succeeded, {counts['failed']} failed"
            )

        try:
            summary = record_expert(
                suite,
                out,
                episodes_per_task=episodes_per_task,
                obs=keys,
                image_size=image_size,
                max_episode_steps=max_episode_steps,
                steps_after_success=None if full_episodes else steps_after_success,
                only_success=only_success,
                workers=workers,
                seed=seed,
                action_noise=action_noise,
                track_cameras=_track_cameras(track_cameras),
                human_proxy=_human_proxy(source, proxy_noise),
                on_episode=on_episode,
            )
        except (StoreError, ValueError) as e:  # ValueError: a request the family cannot record
            raise UserError(str(e)) from None
    console.print(
        f"recorded {summary.recorded} episodes into {out} "
        f"({summary.skipped} already there, {summary.discarded} failed and dropped); "
        f"the store holds {summary.episodes_in_store} episodes"
    )
    for line in summary.short:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _record_human_video(
    clips: str, out: str, tasks: str | None, image_size: int, hand: str
) -> None:
    """`il record --human-video`: clips of a hand as human episodes of one task."""
    from il.data.store import StoreError
    from il.human_video import HumanVideoError, record_human_videos

    names = _parse_tasks(tasks)
    if len(names) != 1:
        raise UserError("--human-video needs the task the clips show: --tasks drawer-close-v3")
    try:
        recorded, skipped = record_human_videos(
            clips, out, task=names[0], image_size=image_size, hand=hand
        )
    except (HumanVideoError, StoreError) as e:
        raise UserError(str(e)) from None
    console.print(
        f"recorded {recorded} clips into {out} ({skipped} already there)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _human_proxy(source: str, noise_px: float) -> Any:
    """The human-proxy settings `il record --source human-proxy` asks for (None: the expert)."""
    if source != "human-proxy":
        return None
    from envs.human_proxy import HumanProxy

    return HumanProxy(noise_px=noise_px)


def _track_cameras(given: str | None) -> tuple[str, ...] | None:
    """--tracks as record_expert takes it: None for the default, () for none."""
    if given is None:
        return None
    if given.strip().lower() == "none":
        return ()
    names = tuple(n.strip() for n in given.split(",") if n.strip())
    if len(names) != 2:
        raise UserError(f"--tracks takes two cameras, e.g. corner,corner2 (or none), got {given!r}")
    return names


@contextlib.contextmanager
def _status_line() -> Iterator[Callable[[Any], None]]:
    """A robot session's live status on stderr, redrawn in place and gone when it ends."""
    from rich.live import Live

    with Live("", console=err_console, refresh_per_second=5, transient=True) as live:
        yield lambda status: live.update(status.line())


def _print_session(report: Any, out: str | None, *, policy: bool) -> None:
    """The closing line of a robot session; a lost connection is then the one-line error."""
    loop = report.loop
    console.print(
        f"{report.saved} episodes saved ({report.successes} successful), "
        f"{report.discarded} discarded; {report.steps} steps at "
        f"{loop.get('achieved_hz', 0):.1f} Hz, "
        f"jitter p99 {loop.get('jitter_p99_ms', 0):.2f} ms, {loop.get('overruns', 0)} overruns"
        + (
            f"; {report.from_source['corrected_steps']} steps corrected in words"
            if "corrected_steps" in report.from_source
            else f"; {report.intervention_steps} steps by the operator"
            if policy
            else ""
        )
        + (
            f"; safety: {report.safety.get('rejections')}"
            if report.safety.get("rejections")
            else ""
        )
        + (f"; into {out}" if out else "")
    )
    lost = report.lost_connection_message()
    if lost is not None:
        raise UserError(lost)


@app.command("deploy")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=str),
    required=True,
    help="A run folder of `il train` (its latest checkpoint) or a checkpoint folder.",
)
@_robot_options(robot_required=True)
@click.option(
    "--record",
    "out",
    type=click.Path(path_type=str),
    default=None,
    help="Store every episode (policy and operator steps, marked per step) here.",
)
@click.option(
    "--max-episode-steps",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Steps after which an episode ends.",
)
@click.option(
    "--steps-after-success",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Steps an episode goes on after the robot reports success.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=8),
    default=84,
    show_default=True,
    help="Side of the camera images, in pixels.",
)
@click.option(
    "--act-ahead",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Predict each action chunk this many steps before it is needed, on a background "
    "thread, so the loop never waits on the network (the policy then reacts that many steps "
    "later); for slow policies such as diffusion on a CPU.",
)
@click.option(
    "--correct",
    metavar="DEVICE",
    default=None,
    help="Correct the policy in words instead of taking over the arm, from this device "
    "(keyboard, gamepad, spacemouse, or its YAML, as for --teleop): a held direction or "
    "gripper key gives the policy that motion's phrase, t on the keyboard types one. For "
    "policies that act through language motions (rth).",
)
@click.argument("acting", nargs=-1)
def deploy(
    checkpoint: str,
    robot: str,
    camera: tuple[str, ...],
    hz: float | None,
    safety: str | None,
    teleop: str | None,
    episodes: int | None,
    on_disconnect: str,
    out: str | None,
    max_episode_steps: int,
    steps_after_success: int,
    image_size: int,
    act_ahead: int,
    correct: str | None,
    acting: tuple[str, ...],
) -> None:
    """Run a policy on a robot through the safety filter; the operator can take over with
    --teleop (those steps are marked as interventions), correct an rth policy in words with
    --correct (those steps are marked too, with the phrase), or stop at once. ACTING:
    model.key=value changes to how the policy acts, as for il eval."""
    from il.rig import RigError, make_rig
    from il.sources import CorrectionSource, NotCorrectable

    if teleop is not None and correct is not None:
        raise UserError(
            "give --teleop (take over the arm) or --correct (correct the policy in words), not both"
        )
    device = correct or teleop
    try:
        rig = make_rig(
            robot, cameras=camera, image_size=image_size, hz=hz, safety=safety, teleop=device
        )
        policy = rig.load_policy(checkpoint, act_ahead=act_ahead, acting=acting)
        source = None
        if correct is not None:
            try:
                source = CorrectionSource(policy)
            except NotCorrectable as e:
                raise UserError(
                    f"--correct: {e}; the checkpoint {checkpoint} can be taken over with "
                    "--teleop instead"
                ) from None
        with _status_line() as show:
            report = rig.run(
                source,
                policy=None if source is not None else policy,
                out=out,
                episodes=episodes or (None if device else 1),
                max_steps=max_episode_steps,
                steps_after_success=steps_after_success,
                on_disconnect=on_disconnect,
                on_status=show,
            )
    except RigError as e:
        raise UserError(str(e)) from None
    _print_session(report, out, policy=True)


@app.command("replay")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--episode",
    "episode_indices",
    type=click.IntRange(min=0),
    multiple=True,
    default=(0,),
    show_default=True,
    help="Episode index; repeat it to replay several in turn.",
)
@_skip_damaged_option("replay the others")
@_robot_options(robot_required=True)
def replay(
    path: str,
    episode_indices: tuple[int, ...],
    skip_damaged: bool,
    robot: str,
    camera: tuple[str, ...],
    hz: float | None,
    safety: str | None,
    teleop: str | None,
    episodes: int | None,
    on_disconnect: str,
) -> None:
    """Send recorded episodes' actions to a robot, at the store's rate, through the safety
    filter; the scene is reset to each episode's seed where the robot can. Damaged episodes are
    refused before the robot moves."""
    from il.data.integrity import damage_error, find_damage
    from il.data.store import DemoStore, StoreError
    from il.rig import RigError, make_rig
    from il.sources import ReplaySource

    try:
        store = DemoStore.open(path)
    except StoreError as e:
        raise UserError(str(e)) from None
    chosen = list(dict.fromkeys(episode_indices))
    with store:
        for episode in chosen:
            if episode >= store.num_episodes:
                raise UserError(
                    f"{path} has {store.num_episodes} episodes (0..{store.num_episodes - 1}); "
                    f"--episode {episode} is not one of them"
                )
        try:
            # Only the actions are sent, so only they are checked; nothing moves before.
            key = ReplaySource.action_key(store)
            damage = find_damage(store, [key], chosen)
            damaged = sorted({d.episode for d in damage})
            if damage and not skip_damaged:
                fix = "pass --skip-damaged to replay the others" if len(chosen) > 1 else ""
                raise damage_error(store, damage, len(chosen), fix or "replay another --episode")
            chosen = [e for e in chosen if e not in damaged]
            if damaged:
                console.print(f"skipped {len(damaged)} damaged episode(s): {damaged}", markup=False)
            if not chosen:
                raise UserError(f"every episode asked for is damaged in {path}; nothing to replay")
            recording = ReplaySource.from_store(store, chosen)
        except StoreError as e:
            raise UserError(str(e)) from None
        rate = hz or store.schema.fps or None
        convention, width = store.schema.action, store.schema.keys["action"].shape[0]
    try:
        rig = make_rig(robot, cameras=camera, hz=rate, safety=safety, teleop=teleop)
        rig.accept_actions(convention, width, f"the recording {path}")
        with _status_line() as show:
            report = rig.run(recording, on_disconnect=on_disconnect, on_status=show)
    except RigError as e:
        raise UserError(str(e)) from None
    _print_session(report, None, policy=False)


@app.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON.")
@click.option(
    "--verify",
    is_flag=True,
    help="Also read and decode every chunk of every key and check each episode against the "
    "checksums taken when it was recorded; lists damaged episodes by index, key and chunk file, "
    "and exits with status 1 if there are any.",
)
def info(path: str, as_json: bool, verify: bool) -> None:
    """Describe a DemoStore: episodes, steps, keys, tasks, success, sources, language-motion
    labels, interventions, motion tracks, checksums."""
    import json

    from il.data.motion_labels import label_statistics
    from il.data.store import DemoStore, StoreError
    from il.data.tracks import track_statistics
    from il.interventions import intervention_statistics

    try:
        store = DemoStore.open(path)
        report = store.info()
        report["language_motion"] = label_statistics(store)
        report["interventions"] = intervention_statistics(store)
        report["tracks"] = track_statistics(store)
        spec = store.schema.action_spec
        damage = _verify_store(store) if verify else None
    except StoreError as e:
        raise UserError(str(e)) from None
    if damage is not None:
        report["damage"] = [d.__dict__ for d in damage]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        if damage:
            sys.exit(1)
        return
    console.print(
        f"[bold]{report['path']}[/]  {report['format']} v{report['schema_version']}, "
        f"{report['fps']:g} fps"
    )
    rate = report["success_rate"]
    console.print(
        f"{report['episodes']} episodes, {report['steps']} steps, success "
        + ("-" if rate is None else f"{100 * rate:.1f}%")
        + ", sources: "
        + (", ".join(f"{k} {v}" for k, v in report["sources"].items()) or "-")
    )
    keys = Table(title="keys (per step)", title_justify="left")
    for col in ("key", "shape", "dtype", "steps/chunk", "on disk"):
        keys.add_column(col, justify="left" if col == "key" else "right", no_wrap=True)
    wide = console.width >= 120  # descriptions only where they fit; --json has them all
    if wide:
        keys.add_column("description")
    for k, v in report["keys"].items():
        size = v["bytes_on_disk"]
        row = [k, str(tuple(v["shape"][1:])), v["dtype"], str(v["chunks"][0])]
        row.append("-" if size is None else _human_bytes(size))
        keys.add_row(*row, *([_shorten(v["description"], 60)] if wide else []))
    console.print(keys)
    tasks = Table(title="tasks", title_justify="left")
    tasks.add_column("task", no_wrap=True)
    tasks.add_column("episodes", justify="right")
    tasks.add_column("success", justify="right")
    coverage = report["variations"]
    if coverage:
        tasks.add_column("variations", justify="right")
        tasks.add_column("task seed", justify="right")
    for k, v in report["tasks"].items():
        row = [k, str(v), f"{100 * report['task_success_rate'][k]:.0f}%"]
        if coverage:
            row += _variation_cells(coverage.get(k))
        tasks.add_row(*row)
    console.print(tasks)
    if coverage:
        console.print(_duplicates_line(coverage), markup=False, highlight=False, soft_wrap=True)
    console.print(f"action: {spec.describe() if spec else 'no convention stated'}", markup=False)
    for line in _label_lines(report["language_motion"]):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if (chosen := report["interventions"]) is not None:
        console.print(_interventions_line(chosen), markup=False, highlight=False, soft_wrap=True)
    if (tracks := report["tracks"]) is not None:
        console.print(_tracks_line(tracks), markup=False, highlight=False, soft_wrap=True)
    sums = report["checksums"]
    if sums is None:
        summed = (
            "none (recorded before checksums: --verify can only check that every chunk decodes)"
        )
    elif sums["episodes"] == report["episodes"]:
        summed = f"{sums['algorithm']} of every key, every episode"
    else:
        why = (
            f"the others lack the checksum of {report['rewriting']}, whose rewrite was interrupted"
            if report["rewriting"]
            else "the others were recorded before checksums"
        )
        summed = (
            f"{sums['algorithm']} of every key for {sums['episodes']} of {report['episodes']} "
            f"episodes ({why})"
        )
    console.print(f"checksums: {summed}", markup=False)
    if damage is not None:
        _print_damage(store, damage, sums is not None)


def _finite(low: float, below: float | None = None) -> Callable[..., float | None]:
    """A click callback: a number that is finite, at least `low` and below `below` (NaN
    passes click's own ranges)."""

    def check(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return None
        if not math.isfinite(value) or value < low or (below is not None and value >= below):
            where = f"in [{low:g}, {below:g})" if below is not None else f"at least {low:g}"
            raise click.BadParameter(f"must be a finite number {where}, got {value}")
        return value

    return check


@app.command("relabel")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--rel-threshold",
    type=float,
    default=None,
    callback=_finite(0.0, 1.0),
    help="Name an axis when its motion exceeds this fraction of the largest axis's, in [0, 1) "
    "[default: the store's, else 0.3].",
)
@click.option(
    "--abs-threshold",
    type=float,
    default=None,
    callback=_finite(0.0),
    help="... and exceeds this many metres per step [default: the store's, else a tenth of the "
    "hand's top speed per step: 0.001 for Meta-World].",
)
@click.option(
    "--gripper-threshold",
    type=float,
    default=None,
    callback=_finite(0.0),
    help="Change of the gripper opening (0 closed .. 1 open) per step that counts as closing "
    "or opening [default: the store's, else 0.025].",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=None,
    help="Steps a label looks ahead [default: the store's, else 50 ms of steps: 4 at 80 Hz].",
)
def relabel(
    path: str,
    rel_threshold: float | None,
    abs_threshold: float | None,
    gripper_threshold: float | None,
    window: int | None,
) -> None:
    """Label every step of a DemoStore with language motions again, from its recorded hand
    motion: with other thresholds, or a store recorded without labels. The thresholds used are
    recorded in the store. Safe to interrupt: the store stays readable, and running the same
    command again finishes it."""
    from il.data.motion_labels import label_statistics, labelling_of, relabel
    from il.data.store import DemoStore, StoreError

    thresholds = {
        "rel_threshold": rel_threshold,
        "abs_threshold": abs_threshold,
        "gripper_threshold": gripper_threshold,
        "window": window,
    }
    try:
        with DemoStore.open(path) as store:  # what cannot be labelled is said before writing
            total = store.num_episodes
            labelling = labelling_of(store.schema, **thresholds)
        if isinstance(labelling, str):
            raise UserError(f"{path} cannot be labelled with language motions: {labelling}")
        with _progress("relabel") as bar:
            job = bar.add_task("episodes", total=total, status="")
            relabel(path, **thresholds, on_episode=lambda: bar.advance(job))
        with DemoStore.open(path) as store:
            labels = label_statistics(store)
    except (StoreError, ValueError) as e:
        raise UserError(str(e)) from None
    console.print(f"relabelled {path}", markup=False, highlight=False, soft_wrap=True)
    for line in _label_lines(labels):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _label_lines(labels: dict[str, Any]) -> list[str]:
    """`il info`'s lines on the language-motion labels: how many steps and episodes, the most
    frequent phrases, how many phrases of the vocabulary, and how they were made; or why the
    store has none."""
    interrupted = (
        [
            "  an `il relabel` of this store was interrupted: its labels are partly old, partly "
            "new, or not there yet; run it again to finish"
        ]
        if labels["interrupted"]
        else []
    )
    if "unlabelled" in labels:
        return [f"language motion: none ({labels['unlabelled']})", *interrupted]
    steps, episodes = labels["steps"], labels["episodes"]
    lines = [
        f"language motion: {labels['labelled_steps']} of {steps} steps labelled "
        f"({labels['labelled_episodes']} of {episodes} episodes), {labels['phrases_used']} of "
        f"{labels['vocabulary_size']} phrases used"
    ]
    if labels["most_frequent"]:
        lines.append(
            "  most frequent: "
            + ", ".join(f"{p['phrase']} {100 * p['share']:.1f}%" for p in labels["most_frequent"])
        )
    made = labels["labelling"]
    if made and "description" in made:
        lines.append(f"  labelled from {made['description']}")
    else:
        lines.append(
            "  how they were labelled is not recorded (an older store); "
            "`il relabel` labels it again and records it"
        )
    return [*lines, *interrupted]


def _tracks_line(tracks: dict[str, Any]) -> str:
    """`il info`'s line on motion tracks: the cameras, how often the gripper is in view, how
    often it grasps and how well the two views agree."""
    if "error" in tracks:
        return f"motion tracks: {tracks['error']}"
    views = ", ".join(
        f"{name} {size[0]}x{size[1]} (all points in view {100 * c['inside']:.0f}% of steps)"
        for name, c in tracks["cameras"].items()
        for size in [c["size"]]
    )
    error = tracks["reprojection_px"]
    agree = (
        f"; the views agree to {error['mean']:.2f} px (99%: {error['p99']:.2f} px)"
        if error["mean"] is not None
        else ""
    )
    return f"motion tracks: {views}; grasping {100 * tracks['grasping']:.0f}% of steps{agree}"


def _interventions_line(chosen: dict[str, Any]) -> str:
    settings = chosen["settings"]
    by = chosen["by"] + (
        f", after {settings['patience']} disagreeing steps for {settings['hold']}"
        if settings
        else ""
    )
    line = (
        f"interventions: {chosen['steps']} steps ({100 * chosen['fraction']:.1f}%) in "
        f"{chosen['episodes']} episodes, by {by}"
    )
    if chosen["phrases"]:
        top = list(chosen["phrases"].items())[:4]
        line += "; phrases given: " + ", ".join(f"{p} {n}" for p, n in top)
    return line


def _verify_store(store: Any) -> list[Any]:
    """Every damaged episode and key of the store, with a progress bar over its chunks."""
    from il.data.integrity import chunks_to_check, find_damage

    with Progress(
        TextColumn("[bold]verify[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        job = bar.add_task("chunks", total=chunks_to_check(store))
        return find_damage(store, on_chunk=lambda: bar.advance(job))


def _print_damage(store: Any, damage: list[Any], checksums: bool) -> None:
    """The damaged episodes, one row per key, then status 1; or one line saying all is well."""
    what = "decoded and matched their checksums" if checksums else "decoded (no checksums)"
    if not damage:
        console.print(f"verify: all {store.num_episodes} episodes, every key, {what}", markup=False)
        return
    console.print("damaged:", markup=False)
    for d in damage:
        console.print(f"  {d.describe()}", markup=False, highlight=False, soft_wrap=True)
    episodes = len({d.episode for d in damage})
    console.print(
        f"verify: {episodes} of {store.num_episodes} episodes damaged; re-record them, or leave "
        "them out with --skip-damaged (il train, il replay)",
        markup=False,
        soft_wrap=True,
    )
    sys.exit(1)


def _variation_cells(coverage: dict[str, Any] | None) -> list[str]:
    """A task's variation coverage (`44 of 50`) and task seed for `il info`'s task table."""
    if coverage is None:
        return ["-", "-"]
    stored, total = coverage["stored"], coverage["total"]
    seeds = ", ".join(str(s) for s in coverage["task_seeds"])
    return [f"{stored} of {total}" if total is not None else str(stored), seeds]


def _duplicates_line(coverage: dict[str, dict[str, Any]]) -> str:
    """`il info`'s line on variations played by more than one episode."""
    duplicated = [
        f"{task}: " + ", ".join(f"{d['variation']} ×{len(d['episodes'])}" for d in c["duplicates"])
        for task, c in coverage.items()
        if c["duplicates"]
    ]
    if not duplicated:
        return "no duplicate variations"
    return "duplicate variations (task: variation ×episodes): " + "; ".join(duplicated)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _max_steps(env: str, given: int | None) -> int:
    """--max-episode-steps, else the env family's default."""
    import envs

    return given or int(envs.defaults(env)["max_episode_steps"])


def _suite_and_obs(
    env: str, split: str, obs: str | None, tasks: str | None = None, task_seed: int | None = None
) -> tuple[Any, tuple[str, ...]]:
    """The suite named by --env/--split/--task-seed (only --tasks of it, if given) and the keys
    of --obs (None: the family's default), or a one-line error."""
    import envs

    try:
        suite = envs.suite(env, split=split, seed=task_seed or 0)
        if tasks is not None:
            suite = suite.subset(_parse_tasks(tasks))
        return suite, envs.family_of(env).parse_obs(obs)
    except ValueError as e:
        raise UserError(str(e)) from None


def _progress(verb: str) -> Progress:
    """A progress bar for a verb that works through episodes; `status` is free text."""
    return Progress(
        TextColumn(f"[bold]{verb}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


def _parse_tasks(tasks: str | None) -> tuple[str, ...]:
    """--tasks a,b → ("a", "b"); None → () (every task). A --tasks that names nothing (",")
    is an error rather than every task, which is what leaving it out means."""
    names = tuple(t.strip() for t in (tasks or "").split(",") if t.strip())
    if tasks is not None and not names:
        raise UserError("--tasks names no task; give some, e.g. --tasks reach-v3,push-v3")
    return names


def _run_options(out_default: str, config_default: str, skip_what: str) -> Callable:
    """--out, --config, --resume, --skip-damaged and key=value overrides: what `il train` and
    `il finetune` both take, so the two verbs read the same."""

    def apply(fn: Callable) -> Callable:
        for option in reversed(
            [
                click.option(
                    "--out",
                    type=click.Path(path_type=str),
                    default=None,
                    help=f"The run folder (sets out) [default: {out_default}].",
                ),
                click.option(
                    "--config",
                    "config_file",
                    type=click.Path(exists=True, dir_okay=False, path_type=Path),
                    default=None,
                    help=f"A YAML config [default: {config_default}].",
                ),
                click.option(
                    "--resume",
                    is_flag=True,
                    help="Continue the run in --out from its last checkpoint.",
                ),
                _skip_damaged_option(skip_what),
                click.argument("overrides", nargs=-1),
            ]
        ):
            fn = option(fn)
        return fn

    return apply


def _run_overrides(
    overrides: tuple[str, ...], *, data: str | None, out: str | None, skip_damaged: bool
) -> list[str]:
    """The command line's key=value overrides with those its options set, each checked to be
    key=value."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value (e.g. train.steps=5000)")
    extra = [*overrides]
    if data is not None:
        extra.append(f"data.path={data}")
    if out is not None:
        extra.append(f"out={out}")
    if skip_damaged:
        extra.append("data.skip_damaged=true")
    return extra


def _train_or_resume(
    policy: str | None, folder: Path, resume: bool, extra: list[str], fresh: Callable[[], Any]
) -> None:
    """Train the run `fresh()` configures, or with --resume carry on the one in its folder
    with the run's own config (and policy) and this command's overrides on top."""
    from il.data.store import StoreError
    from il.train import ConfigError, load_config

    try:
        saved = folder / "config.yaml"
        if resume and saved.exists():
            config = load_config(policy, saved, extra)
        else:
            config = fresh()
            saved = Path(config.out) / "config.yaml"
            if resume and saved.exists():
                config = load_config(policy, saved, extra)
        _run_training(config, resume)
    except (ConfigError, StoreError, OSError) as e:  # OSError: the run folder's disk, mid-run
        raise UserError(str(e)) from None


@app.command(
    "train",
    context_settings={"ignore_unknown_options": False},
)
@click.option(
    "--policy",
    default=None,
    help=f"The method: {', '.join(METHODS)} [default: the --config file's policy:, else bc].",
)
@click.option(
    "--data",
    type=str,
    default=None,
    help="The DemoStore to learn from (sets data.path).",
)
@_run_options(
    "runs/<policy>",
    "configs/<policy>.yaml when it exists, else the method's own preset",
    "train on the others (sets data.skip_damaged)",
)
def train_(
    policy: str | None,
    data: str | None,
    out: str | None,
    config_file: Path | None,
    resume: bool,
    skip_damaged: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train a policy on a DemoStore. OVERRIDES are key=value, e.g. train.steps=5000
    model.hidden=[256,256] data.obs=[obs/state,obs/image/corner]."""
    from il.train import load_config

    extra = _run_overrides(overrides, data=data, out=out, skip_damaged=skip_damaged)
    preset = config_file or _default_config(policy or "bc")
    _train_or_resume(
        policy,
        Path(out or f"runs/{policy or 'bc'}"),
        resume,
        extra,
        lambda: load_config(policy, preset, extra),
    )


def _run_training(config: Any, resume: bool) -> None:
    """Train with a progress bar, then say where the results are (`il train`, `il finetune`)."""
    from il.train import train

    with _progress("train") as bar:
        job = bar.add_task(f"{config.policy} → {config.out}", total=config.train.steps, status="")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            shown = next((k for k in ("mse", "ce_motion", "loss") if k in metrics), None)
            status = f"{shown} {metrics[shown]:.4f}" if shown else ""
            bar.update(job, completed=step, status=status)

        last = train(config, resume=resume, on_step=on_step)
    console.print(f"checkpoint: {last}")
    console.print(
        f"curves: {Path(config.out) / 'curves.png'}; metrics: {Path(config.out) / 'metrics.csv'}"
    )
    console.print(f"evaluate it: il eval --checkpoint {config.out}")


@app.command("finetune")
@click.option(
    "--method",
    required=True,
    help="The fine-tuning method, e.g. rth-intervene (from an rth checkpoint) or flat-iwr "
    "(from a bc checkpoint); a wrong one names the others.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=str),
    required=True,
    help="The run folder (its latest checkpoint) or checkpoint folder to start from (sets init).",
)
@click.option(
    "--data",
    type=str,
    required=True,
    help="The DemoStore of corrections to learn from (sets data.path).",
)
@_run_options(
    "runs/<method>",
    "configs/<method>.yaml when it exists, else the method's own preset",
    "fine-tune on the others (sets data.skip_damaged)",
)
def finetune_(
    method: str,
    checkpoint: str,
    data: str,
    out: str | None,
    config_file: Path | None,
    resume: bool,
    skip_damaged: bool,
    overrides: tuple[str, ...],
) -> None:
    """Fine-tune a trained policy on recorded corrections; the result is an ordinary checkpoint
    for `il eval` and `il deploy`. OVERRIDES are key=value, e.g. train.steps=2000
    model.intervention_share=1."""
    from il.train import finetune_config

    extra = _run_overrides(overrides, data=data, out=out, skip_damaged=skip_damaged)
    preset = config_file or _default_config(method)
    _train_or_resume(
        method,
        Path(out or f"runs/{method}"),
        resume,
        extra,
        lambda: finetune_config(method, checkpoint, preset, extra),
    )


def _default_config(policy: str) -> Path | None:
    """configs/<policy>.yaml where the user has one, else the preset the method ships."""
    from il.policies.registry import UnknownMethod, preset

    user = Path("configs") / f"{policy}.yaml"
    if user.exists():
        return user
    try:
        return preset(policy)
    except UnknownMethod:
        return None  # load_config names the known methods in its one-line error


def _pretrain_options(fn: Callable) -> Callable:
    """--data, --out, --config and key=value overrides, as `il train` takes them."""
    for option in reversed(
        [
            click.option("--data", type=str, default=None, help="The DemoStore (sets data=)."),
            click.option(
                "--out", type=click.Path(path_type=str), default=None, help="Output folder."
            ),
            click.option(
                "--config",
                "config_file",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                default=None,
                help="A YAML config [default: configs/id_pretrain.yaml when it exists, else the "
                "method's own preset].",
            ),
            click.argument("overrides", nargs=-1),
        ]
    ):
        fn = option(fn)
    return fn


def _pretrain_config(
    cls: type, section: str, config_file: Path | None, overrides: list[str]
) -> Any:
    """The `section` of the method's preset (configs/id_pretrain.yaml where the user has one,
    or --config) with overrides on top."""
    from omegaconf import OmegaConf

    import il.methods.id_pretraining as method
    from il.config import load_yaml
    from il.methods.id_pretraining.pipeline import PretrainError, load_options

    user = Path("configs") / "id_pretrain.yaml"
    preset = Path(str(method.__file__)).parent / "id_pretrain.yaml"
    path = config_file or (user if user.exists() else preset)
    if not path.exists():
        return load_options(cls, None, overrides)
    return load_options(
        cls, load_yaml(path, PretrainError).get(section) or OmegaConf.create(), overrides
    )


@app.command("pretrain")
@click.option(
    "--objective",
    type=click.Choice(["id", "bc", "fd-implicit", "contrastive", "fd-explicit"]),
    default=None,
    help="Pretraining objective (sets objective=) [default: id].",
)
@_pretrain_options
def pretrain_(
    objective: str | None,
    data: str | None,
    out: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Pretrain an image encoder on a multitask DemoStore (inverse dynamics and the objectives
    it is compared with); fine-tune it with `il fewshot`. OVERRIDES are key=value, e.g.
    steps=5000 frame_gap=2 held_out=[door-lock-v3] encoder.channels=[16,32,32,32]."""
    from il.methods.id_pretraining.pipeline import (
        PretrainConfig,
        PretrainError,
        pretrain,
        pretraining_metrics,
    )

    extra = [*overrides]
    extra += [f"objective={objective}"] if objective else []
    extra += [f"data={data}"] if data else []
    extra += [f"out={out}"] if out else []
    try:
        config = _pretrain_config(PretrainConfig, "pretrain", config_file, extra)
        with _progress("pretrain") as bar:
            job = bar.add_task(f"{config.objective} → {config.out}", total=config.steps, status="")

            def on_step(step: int, metrics: dict[str, float]) -> None:
                bar.update(job, completed=step, status=f"loss {metrics['loss']:.4f}")

            folder = pretrain(config, on_step)
    except PretrainError as e:
        raise UserError(str(e)) from None
    metrics = pretraining_metrics(folder)
    console.print(
        f"encoder: {folder}; held-out {config.objective} loss "
        f"{metrics['val_loss_start']:.4f} → {metrics['val_loss_end']:.4f}"
    )
    console.print(f"fine-tune it: il fewshot --encoder {folder} --data <store of a new task>")


@app.command("fewshot")
@click.option(
    "--encoder",
    default=None,
    help="A run folder of `il pretrain` (its encoder checkpoint), or scratch, or state "
    "(sets encoder=).",
)
@click.option(
    "--demos", type=click.IntRange(min=1), default=None, help="Demonstrations used (sets demos=)."
)
@_pretrain_options
def fewshot_(
    encoder: str | None,
    demos: int | None,
    data: str | None,
    out: str | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Fit a BC head on a few demos of a new task over a frozen pretrained encoder; the result
    is a policy checkpoint for `il eval` and `il deploy`. OVERRIDES are key=value, e.g.
    steps=10000 seed=1."""
    from il.methods.id_pretraining.pipeline import FewShotConfig, PretrainError, fewshot

    extra = [*overrides]
    extra += [f"encoder={encoder}"] if encoder else []
    extra += [f"demos={demos}"] if demos else []
    extra += [f"data={data}"] if data else []
    extra += [f"out={out}"] if out else []
    try:
        config = _pretrain_config(FewShotConfig, "fewshot", config_file, extra)
        with _progress("fewshot") as bar:
            job = bar.add_task(
                f"{config.encoder} → {config.out}", total=config.train_steps, status=""
            )

            def on_step(step: int, metrics: dict[str, float]) -> None:
                bar.update(job, completed=step, status=f"loss {metrics['loss']:.4f}")

            folder = fewshot(config, on_step)
    except PretrainError as e:
        raise UserError(str(e)) from None
    console.print(f"checkpoint: {folder}")
    console.print(f"evaluate it: il eval --checkpoint {config.out}")


@app.command("experiment")
@click.argument("name")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Training seeds per condition (sets seeds=) [default: the experiment's].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for its data, runs and results [default: runs/<name>].",
)
@click.argument("overrides", nargs=-1)
@_formatted_doc(names=", ".join(EXPERIMENTS))
def experiment(name: str, seeds: int | None, out: Path | None, overrides: tuple[str, ...]) -> None:
    """Run a whole experiment in one command: record, train every method under every condition
    and seed, evaluate, and write results.md, results.json and a bar chart. NAME is one of:
    {names}. OVERRIDES are key=value of the experiment's config, e.g. steps=1000
    train_mazes=[5,20]. Re-running resumes: finished runs are kept."""
    from rich.markdown import Markdown

    from il.experiments import ExperimentError, load, make_config

    try:
        module = load(name)
        config = make_config(module, [*overrides, *([f"seeds={seeds}"] if seeds else [])])
        with _progress("experiment") as bar:
            job = bar.add_task(name, total=None, status="")

            def on_progress(done: int, total: int, label: str) -> None:
                bar.update(job, completed=done, total=total, status=label)

            results = module.run(config, out or Path("runs") / name, on_progress)
    except ExperimentError as e:
        raise UserError(str(e)) from None
    console.print(Markdown(results.read_text()))
    console.print(f"results: {results}")


@app.command("calibrate")
@click.option(
    "--robot",
    default=None,
    help="A follower arm: dynamixel:<port>, feetech:<port>, or its YAML setup "
    "(configs/robots/koch.yaml).",
)
@click.option(
    "--teleop",
    default=None,
    help="A leader arm instead: its teleop YAML (configs/teleop/leader.yaml).",
)
@click.option(
    "--model",
    default=None,
    help="Arm model: koch, koch_leader, so100, so100_leader, so101, so101_leader, aloha, "
    "aloha_leader [default: the setup's, else koch / so100, or their leaders].",
)
@click.option(
    "--out",
    type=click.Path(path_type=str),
    default=None,
    help="Calibration JSON to write [default: the setup's `calibration`, else "
    "calibration/<model>.json].",
)
def calibrate_(robot: str | None, teleop: str | None, model: str | None, out: str | None) -> None:
    """Calibrate a servo arm (Koch, SO-100/101, ALOHA-class; follower or leader): hold it in
    the middle of its range, then move every joint end to end. Drivers load the file on
    connect and write its offsets to the motors."""
    from robots.base import DriverError
    from robots.servo import (
        DEFAULT_LEADER,
        DEFAULT_MODEL,
        calibrate,
        default_calibration_path,
        get_model,
        open_bus,
    )

    if (robot is None) == (teleop is None):
        raise UserError("give the arm to calibrate: --robot (a follower) or --teleop (a leader)")
    try:
        if robot is not None:
            from robots.registry import load_robot_config

            setup = load_robot_config(robot)
            bus, _, port = setup.robot.partition(":")
            options = dict(setup.options)
            defaults = DEFAULT_MODEL
        else:
            import yaml

            path = Path(str(teleop))
            if path.suffix not in (".yaml", ".yml") or not path.exists():
                raise UserError(f"--teleop takes a leader arm's YAML (no file {path})")
            options = yaml.safe_load(path.read_text()) or {}
            if not isinstance(options, dict) or "port" not in options:
                raise UserError(f"{path} names no `port`: is it a leader arm's config?")
            port = str(options.pop("port"))
            bus = str(options.get("bus", "dynamixel"))
            defaults = DEFAULT_LEADER
        if bus not in defaults or not port:
            raise UserError(
                f"il calibrate drives servo arms: give dynamixel:<port> or feetech:<port>, "
                f"not {robot or teleop!r}"
            )
        model = get_model(model or options.get("model") or defaults[bus], bus).name
        out = out or options.get("calibration") or str(default_calibration_path(model))
        motors = open_bus(
            bus,
            port,
            baudrate=int(options.get("baudrate", 1_000_000)),
            timeout_ms=options.get("timeout_ms"),
        )
        console.print(f"calibrating a {model} arm on {bus}:{port}; its torque is switched off")
        with motors:
            calibration = calibrate(
                motors,
                model,
                lambda prompt: click.prompt(
                    prompt, default="", show_default=False, prompt_suffix=" "
                ),
                say=console.print,
            )
        written = calibration.save(out)
    except (DriverError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    console.print(f"wrote {written}; the driver loads it on connect (options: calibration)")


@app.command("envs")
def envs_() -> None:
    """List every env family's suites, tasks, observations and defaults."""
    import envs

    for family in envs.families():
        listing = family.listing
        table = Table(title=listing.title)
        table.add_column("name")
        table.add_column("tasks", justify="right")
        table.add_column("splits")
        for row in listing.suites:
            table.add_row(*row)
        console.print(table)
        for label, text in listing.notes:
            console.print(f"[bold]{label}:[/] {text}")
        console.print(
            f"[bold]defaults:[/] --obs {','.join(family.obs_keys)} "
            f"--max-episode-steps {family.max_episode_steps}"
        )


def _fail(message: str) -> None:
    # the message is text, not markup: "[cm]" in a unit or "['a']" in a list stays as written
    err_console.print(
        f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True
    )
    sys.exit(2)


def main() -> None:
    """Entry point of the `il` console script."""
    try:
        rc = app.main(standalone_mode=False)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:
            click.echo(e.ctx.get_help())
            sys.exit(0)
        where = e.ctx.command_path if e.ctx else "il"
        _fail(f"{e.format_message()} (see '{where} --help')")
    except UserError as e:
        _fail(str(e))
    except (KeyboardInterrupt, click.Abort):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
