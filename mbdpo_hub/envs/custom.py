"""The 11 custom DMControl tasks of mt30/mt80, written for mbdpo_hub.

Each task subclasses the stock dm_control task of its domain and changes the
reward (and, for cup-spin, the initial state). Reward formulas follow the
TD-MPC2 task specification; ``tol`` below is ``dm_control.utils.rewards.tolerance``.

| task                    | reward                                                                        |
|-------------------------|-------------------------------------------------------------------------------|
| walker-{walk,run}-backwards | stand * (5 * tol(vx <= -v, margin v/2, 0.5, linear) + 1) / 6, v = 1 / 8   |
| cheetah-run-backwards   | tol(vx <= -8, margin 8, 0, linear)                                            |
| cheetah-run-{front,back}| up * (5 * tol(vx >= 6, margin 6, 0, linear) + 1) / 6                          |
| cheetah-jump            | mean(stand_one_foot(bfoot), stand_one_foot(ffoot))                            |
| hopper-hop-backwards    | tol(height, (0.6, 2)) * tol(vx <= -1, margin 0.5, 0.5, linear)                |
| reacher-three-{easy,hard} | stock sparse reacher reward on a 3-link arm (assets/reacher_three.xml)      |
| cup-spin                | (1 - in_target) * (tol(dist >= .5, .25, .5, lin) + 2 tol(|v| >= 6, 3, .5, lin)) / 3 |
| pendulum-spin           | tol(|omega| >= 9, margin 4.5, 0.5, linear)                                    |

Episodes are built with an infinite dm_control time limit: the gymnasium
wrapper truncates after ``episode_length`` agent steps itself.
"""

from __future__ import annotations

import os
import re

import numpy as np
from dm_control.rl import control
from dm_control.suite import ball_in_cup, cheetah, common, hopper, pendulum, reacher, walker
from dm_control.utils import rewards

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

_INF = float("inf")

# Thresholds of the custom rewards.
_WALKER_STAND_HEIGHT = 1.2
_CHEETAH_HEIGHT = 1.2
_HOPPER_STAND_HEIGHT = 0.6
_HOPPER_BACK_SPEED = 1.0
_CUP_DIST_TARGET = 0.5
_CUP_TARGET_SPEED = 6.0
_CUP_IN_CUP_FRACTION = 0.9
_PENDULUM_TARGET_SPEED = 9.0


def _linear_tol(x, bounds, margin, value_at_margin):
    return rewards.tolerance(x, bounds=bounds, margin=margin, value_at_margin=value_at_margin, sigmoid="linear")


# --------------------------------------------------------------------------------------------
# Models. Walker/cheetah get a longer (and origin-centred) floor so that backwards runs stay on
# the visible floor; MuJoCo planes are infinite for collisions, so dynamics are unchanged.
# --------------------------------------------------------------------------------------------


def _with_floor(xml_name: str, geom_name: str, half_length: float) -> str:
    xml = common.read_model(xml_name)
    if isinstance(xml, bytes):
        xml = xml.decode()
    pattern = re.compile(r'(<geom name="%s"[^>]*?)pos="[^"]*"([^>]*?)size="[^" ]*' % geom_name)
    new, n = pattern.subn(r'\1pos="0 0 0"\2size="%g' % half_length, xml, count=1)
    if n != 1:  # dm_control changed its XML; keep the stock floor rather than fail.
        return xml
    return new


def walker_model() -> tuple[str, dict]:
    return _with_floor("walker.xml", "floor", 500), common.ASSETS


def cheetah_model() -> tuple[str, dict]:
    return _with_floor("cheetah.xml", "ground", 200), common.ASSETS


def hopper_model() -> tuple[str, dict]:
    return _with_floor("hopper.xml", "floor", 100), common.ASSETS


def reacher_three_model() -> tuple[str, dict]:
    with open(os.path.join(ASSETS_DIR, "reacher_three.xml")) as f:
        return f.read(), common.ASSETS


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class WalkerBackwards(walker.PlanarWalker):
    """Planar walker rewarded for moving in -x at ``move_speed`` or faster."""

    def get_reward(self, physics):
        standing = rewards.tolerance(
            physics.torso_height(), bounds=(_WALKER_STAND_HEIGHT, _INF), margin=_WALKER_STAND_HEIGHT / 2
        )
        upright = (1 + physics.torso_upright()) / 2
        stand_reward = (3 * standing + upright) / 4
        v = self._move_speed
        move_reward = _linear_tol(physics.horizontal_velocity(), (-_INF, -v), v / 2, 0.5)
        return stand_reward * (5 * move_reward + 1) / 6


class CustomCheetah(cheetah.Cheetah):
    """Cheetah with one of the goals ``run-backwards | run-front | run-back | jump``."""

    def __init__(self, goal: str, move_speed: float, random=None):
        super().__init__(random=random)
        self._goal = goal
        self._move_speed = move_speed

    @staticmethod
    def _height(physics, body: str) -> float:
        return physics.named.data.xpos[body, "z"]

    def _stand_one_foot(self, physics, raised_foot: str) -> float:
        height = (self._height(physics, "torso") + self._height(physics, raised_foot)) / 2
        height_reward = rewards.tolerance(height, bounds=(_CHEETAH_HEIGHT, _INF), margin=_CHEETAH_HEIGHT / 2)
        v = self._move_speed
        still_reward = _linear_tol(physics.speed(), (-v, v), v, 0.0)
        return (5 * height_reward + still_reward) / 6

    def _run_one_foot(self, physics, raised_foot: str) -> float:
        foot_up = rewards.tolerance(
            self._height(physics, raised_foot), bounds=(_CHEETAH_HEIGHT, _INF), margin=_CHEETAH_HEIGHT / 2
        )
        torso_up = rewards.tolerance(
            self._height(physics, "torso"), bounds=(_CHEETAH_HEIGHT, _INF), margin=_CHEETAH_HEIGHT / 2
        )
        up_reward = (3 * foot_up + 2 * torso_up) / 5
        v = self._move_speed
        speed_reward = _linear_tol(physics.speed(), (v, _INF), v, 0.0)
        return up_reward * (5 * speed_reward + 1) / 6

    def get_reward(self, physics):
        if self._goal == "run-backwards":
            v = self._move_speed
            return _linear_tol(physics.speed(), (-_INF, -v), v, 0.0)
        if self._goal == "run-front":  # balance on the front legs: the back foot is raised
            return self._run_one_foot(physics, "bfoot")
        if self._goal == "run-back":
            return self._run_one_foot(physics, "ffoot")
        if self._goal == "jump":
            return (self._stand_one_foot(physics, "bfoot") + self._stand_one_foot(physics, "ffoot")) / 2
        raise ValueError(f"Unknown cheetah goal {self._goal!r}")


class HopperBackwards(hopper.Hopper):
    """Hopper rewarded for standing and hopping in -x at >= 1 m/s."""

    def __init__(self, random=None):
        super().__init__(hopping=True, random=random)

    def get_reward(self, physics):
        standing = rewards.tolerance(physics.height(), (_HOPPER_STAND_HEIGHT, 2))
        hopping = _linear_tol(physics.speed(), (-_INF, -_HOPPER_BACK_SPEED), _HOPPER_BACK_SPEED / 2, 0.5)
        return standing * hopping


class ThreeLinkReacher(reacher.Reacher):
    """Stock sparse reacher task; the observation is position (3), to_target (2), velocity (3)."""


class CupSpin(ball_in_cup.BallInCup):
    """Ball-in-cup where the ball starts in the cup 90% of the time and must be spun around it."""

    def initialize_episode(self, physics):
        # Rejection-sample a collision-free ball position; 90% of episodes require it inside the cup.
        start_outside = self.random.uniform() < 1 - _CUP_IN_CUP_FRACTION
        while True:
            physics.named.data.qpos["ball_x"] = self.random.uniform(-0.2, 0.2)
            physics.named.data.qpos["ball_z"] = self.random.uniform(0.2, 0.5)
            physics.after_reset()
            if physics.data.ncon == 0 and (start_outside or physics.in_target()):
                break
        # Skip BallInCup.initialize_episode (it would resample the ball); run the base-class hook.
        super(ball_in_cup.BallInCup, self).initialize_episode(physics)

    def get_reward(self, physics):
        dist = np.linalg.norm(physics.ball_to_target())
        speed = np.linalg.norm(physics.named.data.qvel[["ball_x", "ball_z"]])
        dist_reward = _linear_tol(dist, (_CUP_DIST_TARGET, _INF), _CUP_DIST_TARGET / 2, 0.5)
        speed_reward = _linear_tol(speed, (_CUP_TARGET_SPEED, _INF), _CUP_TARGET_SPEED / 2, 0.5)
        return (1 - physics.in_target()) * (dist_reward + 2 * speed_reward) / 3


class PendulumSpin(pendulum.SwingUp):
    """Pendulum rewarded for spinning at |omega| >= 9 rad/s (SwingUp's random initial angle)."""

    def get_reward(self, physics):
        omega = abs(float(np.asarray(physics.angular_velocity()).ravel()[0]))
        return _linear_tol(omega, (_PENDULUM_TARGET_SPEED, _INF), _PENDULUM_TARGET_SPEED / 2, 0.5)


# --------------------------------------------------------------------------------------------
# Builders: name -> control.Environment
# --------------------------------------------------------------------------------------------


def _walker(speed):
    def build(random):
        physics = walker.Physics.from_xml_string(*walker_model())
        task = WalkerBackwards(move_speed=speed, random=random)
        return control.Environment(physics, task, time_limit=_INF, control_timestep=walker._CONTROL_TIMESTEP)

    return build


def _cheetah(goal, speed):
    def build(random):
        physics = cheetah.Physics.from_xml_string(*cheetah_model())
        task = CustomCheetah(goal=goal, move_speed=speed, random=random)
        return control.Environment(physics, task, time_limit=_INF)

    return build


def _hopper_backwards(random):
    physics = hopper.Physics.from_xml_string(*hopper_model())
    task = HopperBackwards(random=random)
    return control.Environment(physics, task, time_limit=_INF, control_timestep=hopper._CONTROL_TIMESTEP)


def _reacher_three(target_size):
    def build(random):
        physics = reacher.Physics.from_xml_string(*reacher_three_model())
        task = ThreeLinkReacher(target_size=target_size, random=random)
        return control.Environment(physics, task, time_limit=_INF)

    return build


def _cup_spin(random):
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    task = CupSpin(random=random)
    return control.Environment(physics, task, time_limit=_INF, control_timestep=ball_in_cup._CONTROL_TIMESTEP)


def _pendulum_spin(random):
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    task = PendulumSpin(random=random)
    return control.Environment(physics, task, time_limit=_INF)


CUSTOM_BUILDERS = {
    "walker-walk-backwards": _walker(walker._WALK_SPEED),
    "walker-run-backwards": _walker(walker._RUN_SPEED),
    "cheetah-run-backwards": _cheetah("run-backwards", 8.0),
    "cheetah-run-front": _cheetah("run-front", 6.0),
    "cheetah-run-back": _cheetah("run-back", 6.0),
    "cheetah-jump": _cheetah("jump", 0.5),
    "hopper-hop-backwards": _hopper_backwards,
    "reacher-three-easy": _reacher_three(reacher._BIG_TARGET),
    "reacher-three-hard": _reacher_three(reacher._SMALL_TARGET),
    "cup-spin": _cup_spin,
    "pendulum-spin": _pendulum_spin,
}


def load_custom(name: str, random=None) -> control.Environment:
    """Build custom task ``name`` as a dm_control ``control.Environment`` (no time limit)."""
    return CUSTOM_BUILDERS[name](random)


__all__ = ["CUSTOM_BUILDERS", "load_custom"]
