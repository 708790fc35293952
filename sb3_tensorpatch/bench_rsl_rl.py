"""rsl_rl's PPO on :class:`~sb3_tensorpatch.bench_envs.TorchCartPole`, for ``bench --train --rsl-rl``.

rsl_rl (``pip install rsl-rl-lib``) is the lean PPO that Isaac Lab ships; it is not a dependency of this
package: this module imports it and is imported only when it is installed. Written against rsl_rl 5.x, whose
env interface (``rsl_rl.env.VecEnv``) is ``get_observations() -> TensorDict`` and ``step(actions) ->
(observations, rewards, dones, extras)``, with the timeouts in ``extras["time_outs"]``.

The configuration follows the bench's SB3 PPO as far as rsl_rl allows (SB3's defaults where the bench
sets nothing). Where it cannot, or does by design differently:

- both trainers: [64, 64] tanh networks for the actor and the critic, separate; a diagonal Gaussian with a
  state-independent, learned log standard deviation starting at 0; 32 steps per env, 10 epochs of 4
  minibatches; learning rate 3e-4 (fixed), gamma 0.99, GAE lambda 0.95, clip range 0.2, value loss
  coefficient 0.5, no entropy bonus, no value clipping, gradient norm clipped at 0.5, advantages
  normalised per minibatch, no observation normalisation;
- rsl_rl clips the gradient norm of the actor and of the critic separately (SB3: of all parameters at
  once), shuffles once per update (SB3: once per epoch), initialises its layers with torch's defaults (SB3:
  orthogonal, with gains), bootstraps timeouts with the value of the observation the step started from
  (SB3: of the terminal observation) and hands the env its sampled actions unclipped (SB3 clips them to the
  action space; the env clips the force either way);
- rsl_rl checks the env's outputs for NaN every step (its default, kept: three host reads per step) and
  switches ``torch.distributions`` validation off for the process when it builds its policy (the bench
  restores the setting after every rsl_rl run, so that SB3's paths keep theirs);
- rsl_rl runs without a log writer (``log_dir=None``), which also leaves out its per-step episode
  bookkeeping; SB3 keeps its episode statistics (``ep_info_buffer``) as always.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any, Callable

import torch
from rsl_rl.env import VecEnv
from rsl_rl.runners import OnPolicyRunner
from tensordict import TensorDict
from torch.distributions import Distribution

from .bench_envs import TorchCartPole


class RslRlCartPole(VecEnv):  # type: ignore[misc]
    """:class:`~sb3_tensorpatch.bench_envs.TorchCartPole` behind rsl_rl's ``VecEnv`` interface, as Isaac Lab's
    rsl_rl wrapper hands an env to rsl_rl: observations ``{"policy": tensor}``, dones as integers, the
    timeouts (truncated and not terminated) in ``extras["time_outs"]``.

    :param env: the env (reset here, with ``seed``)
    :param seed: the seed of the first reset
    """

    def __init__(self, env: TorchCartPole, seed: int = 0) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.num_actions = 1 if env.continuous else 2
        self.max_episode_length = env.max_episode_steps
        self.device = env.device
        self.cfg: dict[str, Any] = {}
        observations, _ = env.reset(seed=seed)
        self.observations = self._group(observations)

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.env.elapsed_steps

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        self.env.elapsed_steps = value

    def _group(self, observations: torch.Tensor) -> TensorDict:
        return TensorDict({"policy": observations}, batch_size=[self.num_envs])

    def get_observations(self) -> TensorDict:
        return self.observations

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict[str, Any]]:
        observations, rewards, terminated, truncated, _ = self.env.step(actions)
        self.observations = self._group(observations)
        dones = (terminated | truncated).to(torch.long)
        return self.observations, rewards, dones, {"time_outs": truncated & ~terminated}


def train_config(setup: dict[str, Any]) -> dict[str, Any]:
    """rsl_rl's runner configuration matching the bench's SB3 PPO (see the module's documentation).

    :param setup: the bench's training setup (``bench_train.SETUP``: ``n_steps``, ``n_epochs``,
        ``minibatches``, ``net_arch``), passed in so that this module does not import the bench's
    """
    network = {"hidden_dims": list(setup["net_arch"]), "activation": "tanh", "obs_normalization": False}
    return {
        "num_steps_per_env": setup["n_steps"],
        "save_interval": 1_000_000,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": setup["n_epochs"],
            "num_mini_batches": setup["minibatches"],
            "learning_rate": 3e-4,
            "schedule": "fixed",
            "desired_kl": None,
            "gamma": 0.99,
            "lam": 0.95,
            "clip_param": 0.2,
            "value_loss_coef": 0.5,
            "entropy_coef": 0.0,
            "use_clipped_value_loss": False,
            "max_grad_norm": 0.5,
            "normalize_advantage_per_mini_batch": True,
        },
        "actor": {
            "class_name": "MLPModel",
            **network,
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 1.0, "std_type": "log"},
        },
        "critic": {"class_name": "MLPModel", **network},
    }


def build_runner(envs: int, device: str, setup: dict[str, Any], seed: int = 0) -> OnPolicyRunner:
    """rsl_rl's ``OnPolicyRunner`` with :func:`train_config` on a fresh continuous ``TorchCartPole``.

    Note that building it switches ``torch.distributions`` validation off for the whole process (rsl_rl
    does), as :func:`time_learn` undoes.
    """
    torch.manual_seed(seed)
    env = RslRlCartPole(TorchCartPole(envs, device, continuous=True), seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints both networks
        return OnPolicyRunner(env, train_config(setup), log_dir=None, device=str(device))


def time_learn(
    envs: int, iterations: int, device: str, sync: Callable[[], None], setup: dict[str, Any]
) -> tuple[float, float]:
    """One timed ``runner.learn(iterations)`` on a fresh runner (building it is not timed).

    :return: the seconds in ``learn()`` and the seconds of it spent collecting: the step loop as the runner
        times it (it hands the time to its logger) plus ``alg.compute_returns`` (the last value and GAE, which
        SB3 computes inside ``collect_rollouts``)
    """
    validate = Distribution._validate_args
    try:
        runner = build_runner(envs, device, setup)
        collect: list[float] = []
        log = runner.logger.log
        compute_returns = runner.alg.compute_returns

        def log_iteration(*args: Any, **kwargs: Any) -> Any:
            collect.append(kwargs["collect_time"])
            return log(*args, **kwargs)

        def timed_compute_returns(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = compute_returns(*args, **kwargs)
            sync()
            collect.append(time.perf_counter() - start)
            return result

        runner.logger.log = log_iteration
        runner.alg.compute_returns = timed_compute_returns
        start = time.perf_counter()
        runner.learn(iterations)
        sync()
        seconds = time.perf_counter() - start
    finally:
        Distribution.set_default_validate_args(validate)
    return seconds, sum(collect)
