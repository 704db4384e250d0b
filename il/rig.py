"""A robot session from the names a user gives: `--robot`, `--camera`, `--safety`, `--teleop`,
`--record`, `--checkpoint` turned into the objects a `Session` runs, connected and closed again
in the right order.

    make_rig(names)          driver, safety filter, camera settings, teleop device (nothing
                             connected yet, so a wrong name costs no motion)
    rig.load_policy(ckpt)    the checkpoint meets the robot, before any command is sent
    rig.run(source, ...)     connect arm, start cameras, open store, connect teleop, run the
                             Session; then teleop, cameras, arm, store are closed in that order

`il record --robot`, `il deploy` and `il replay` are these three calls with their own action
source (il/sources.py); the CLI only parses. Every error a user can fix comes out as one line,
a `RigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from il.data.motion_labels import as_stored
from il.data.store import DemoStore, StoreError
from il.session import Session, SessionReport, Status, robot_schema
from il.sources import ActingPolicy, ActionSource
from robots.action import ActionMismatch, check_actions
from robots.base import Camera, DriverError, Robot, Teleop
from robots.registry import default_safety, load_robot_config, make_camera, make_robot
from robots.safety import SafeRobot, SafetyConfig

if TYPE_CHECKING:
    from il.policies.base import Policy

__all__ = ["Rig", "RigError", "make_rig"]


class RigError(Exception):
    """A setup the user can fix (a name, a file, a device, a checkpoint); one line."""


@dataclass
class Rig:
    """A robot behind its safety filter, the cameras to record and the teleop device, built
    but not connected."""

    driver: Robot
    robot: SafeRobot
    hz: float
    """The control rate: --hz, else the setup's, else the robot's own."""
    camera_specs: list[dict[str, Any]]
    """Each camera's `make_camera` arguments (`name` and its settings)."""
    teleop: Teleop | None = None
    name: str = "the robot"
    """How the user named the robot (`ur:192.168.1.10`), for messages."""

    def accept_actions(self, convention: Mapping[str, Any], dim: int, producer: str) -> None:
        """Refuse, in one line naming both conventions, actions that mean something else to
        this robot than to whatever produced them (a checkpoint, a recording): the one check
        between actions and an arm, done before anything connects."""
        try:
            check_actions(
                convention,
                self.robot.action_spec,
                producer,
                f"robot {self.name}",
                produced_dim=dim,
                fix="use a policy or recording made for this robot's action convention",
            )
        except ActionMismatch as e:
            raise RigError(str(e)) from None

    def load_policy(
        self, checkpoint: str | Path, *, act_ahead: int = 0, acting: Sequence[str] = ()
    ) -> Policy:
        """The policy in `checkpoint`, acting as the `acting` overrides say and predicting
        `act_ahead` steps ahead. It is loaded before the arm is connected, so a checkpoint that
        does not fit this robot is a one-line error before the arm can move."""
        from il.policies.base import CheckpointError
        from il.policies.registry import check_acts, load_policy

        try:
            check_acts(checkpoint)  # a checkpoint that cannot act (an encoder) stops here
            policy = load_policy(checkpoint, acting=acting)
            policy.set_act_ahead(act_ahead)
        except (CheckpointError, ValueError) as e:
            raise RigError(str(e)) from None
        spec = policy.spec
        self.accept_actions(spec.action, spec.action_dim, f"the checkpoint {checkpoint}")
        return policy

    def run(
        self,
        source: ActionSource | None = None,
        *,
        policy: ActingPolicy | None = None,
        out: str | None = None,
        episodes: int | None = None,
        max_steps: int = 100_000,
        steps_after_success: int | None = None,
        wait_for_start: bool = False,
        on_disconnect: str = "keep",
        on_status: Callable[[Status], None] | None = None,
    ) -> SessionReport:
        """Connect everything, run a `Session` (see there for `source`, `policy` and the
        rest), close everything. With `out`, episodes are saved into that store (created, or
        resumed when it holds the same keys). A lost connection ends the run with the report
        saying so; a device or store that fails before is a `RigError`."""
        store: DemoStore | None = None
        try:
            with self.robot, ExitStack() as running:  # closes before the arm disconnects
                cameras = self._start_cameras(running)
                if out is not None:
                    sizes = {c.name: (c.intrinsics.width, c.intrinsics.height) for c in cameras}
                    schema = robot_schema(self.robot, cameras, sizes, self.hz)
                    if source is not None:
                        schema = source.store_schema(schema)
                    store = DemoStore.open_or_create(out, as_stored(out, schema))
                session = Session(
                    self.robot,
                    hz=self.hz,
                    cameras=cameras,
                    teleop=self.teleop,
                    policy=policy,
                    source=source,
                    store=store,
                    task=getattr(self.driver, "task", ""),
                    instruction=getattr(self.driver, "instruction", ""),
                    on_status=on_status,
                    on_disconnect=on_disconnect,
                )
                if self.teleop is not None:
                    self.teleop.connect()
                    running.callback(self.teleop.disconnect)
                return session.run(
                    episodes=episodes,
                    max_steps=max_steps,
                    steps_after_success=steps_after_success,
                    # a device without buttons (a leader arm) cannot say "start"
                    wait_for_start=wait_for_start
                    and (self.teleop is None or self.teleop.has_events),
                )
        except (DriverError, StoreError) as e:
            raise RigError(str(e)) from None
        finally:
            if store is not None:
                store.close()

    def _start_cameras(self, running: ExitStack) -> list[Camera]:
        """Every camera started (stopped when `running` closes), once each has a frame."""
        cameras = []
        for spec in self.camera_specs:
            options = {k: v for k, v in spec.items() if k not in ("name", "extrinsics")}
            camera = make_camera(self.driver, spec["name"], **options)
            if (pose := spec.get("extrinsics")) is not None:
                if not isinstance(pose, dict) or set(pose) != {"R", "t"}:
                    raise DriverError(
                        f"camera {spec['name']}: extrinsics must be a mapping with R (3x3) and "
                        "t (3 numbers, metres): the base frame into the camera's, OpenCV axes"
                    )
                try:
                    camera.set_extrinsics(pose["R"], pose["t"])
                except ValueError as e:
                    raise DriverError(str(e)) from None
            cameras.append(camera)
        for camera in cameras:
            camera.start()
            running.callback(camera.stop)
        for camera in cameras:
            camera.wait_first()  # type: ignore[attr-defined]
        return cameras


def make_rig(
    robot: str,
    *,
    cameras: Sequence[str] = (),
    image_size: int = 84,
    hz: float | None = None,
    safety: str | None = None,
    teleop: str | None = None,
) -> Rig:
    """The rig a user names: `robot` a robot name or a setup YAML; `cameras` by name (with the
    setup's settings where it has them, else square `image_size` images; none: the setup's);
    `safety` a limits YAML (none: the setup's, else the robot's defaults, and a real arm has
    none); `teleop` a device name or YAML (`_make_teleop`)."""
    try:
        setup = load_robot_config(robot)
        driver = make_robot(setup.robot, **setup.options)
        limits = (
            SafetyConfig.from_yaml(safety)
            if safety is not None
            else setup.safety or default_safety(driver)
        )
        device = _make_teleop(teleop) if teleop is not None else None
        safe = SafeRobot(driver, limits)
    except (DriverError, ValueError, OSError) as e:
        raise RigError(str(e)) from None
    by_name = {c["name"]: c for c in setup.cameras}
    chosen = [by_name.get(c, {"name": c, "size": image_size}) for c in cameras] or setup.cameras
    return Rig(driver, safe, hz or setup.hz or driver.fps, chosen, device, robot)


def _make_teleop(teleop: str) -> Teleop:
    """A teleop device by name (keyboard, gamepad, spacemouse) or from a YAML of its options;
    the device is the file's name unless the YAML gives `device` (aloha_leader.yaml names a
    leader arm)."""
    from robots.teleop import make_teleop

    path = Path(teleop)
    if path.suffix not in (".yaml", ".yml"):
        return make_teleop(teleop)
    import yaml

    if not path.exists():
        raise ValueError(f"no teleop config at {path}")
    options = yaml.safe_load(path.read_text()) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path} is not a mapping of teleop options")
    return make_teleop(str(options.pop("device", path.stem)), **options)
