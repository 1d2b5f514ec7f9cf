"""Command-line flags, declared once in groups, each group with the check of its values.

An entry point takes the groups it uses and no other: MonoBeast the env, agent, training, actor
and system groups; PolyBeast the same without the actor group, plus its own (see
polybeast_learner.py, polybeast.py, polybeast_env.py). Spellings follow TorchBeast and the seed
README (`--num_actors`, `--gpu_n`, `--record True`). `FlagParser.parse_flags` reports every bad
value of its groups at once, each naming its flag, as one ConfigError.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence

from torchbeast.envs.memory_maze import IMPLS as ENV_IMPLS
from torchbeast.errors import ConfigError
from torchbeast.models import ENCODERS, POSEMBS

DEFAULT_ENV = "memory_maze:MemoryMaze-9x9-ExtraObs-v0"


def str_to_bool(value: str) -> bool:
    """Parses `--record True`, `--record false`, `--record 1`; argparse calls it for bool flags."""
    lowered = value.strip().lower()
    if lowered in ("true", "t", "yes", "y", "1", "on"):
        return True
    if lowered in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def finite_float(value: str) -> float:
    """A float flag's value: a number, never NaN or an infinity (they pass every range check)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


class OneLineErrorParser(argparse.ArgumentParser):
    """Argparse errors as one line and exit status 2 (argparse prints usage first by default).

    Every `type=float` flag, in any group, parses with `finite_float`. `hints` maps a flag this
    command does not take to what to use instead; an unrecognized argument error that names it
    says so.
    """

    def __init__(self, *args: object, hints: Optional[Dict[str, str]] = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.hints = dict(hints or {})
        # argparse looks types up in this registry (shared with the argument groups) when parsing.
        self.register("type", float, finite_float)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            given = message.split(":", 1)[1].split()
            message += "".join(f"; {flag}: {hint}" for flag, hint in self.hints.items()
                               if any(arg == flag or arg.startswith(flag + "=") for arg in given))
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("environment")
    group.add_argument("--env", default=DEFAULT_ENV,
                       help="Gym id of the Memory Maze task, e.g. memory_maze:MemoryMaze-15x15-ExtraObs-v0; "
                            "'torchbeast:CueMemory-v0' (memory) and 'torchbeast:PositionTask-v0' (position; "
                            "-ZeroPos-v0 zeroes the positions) are tiny tasks for tests. (default: %(default)s)")
    group.add_argument("--env_impl", default="fast", choices=list(ENV_IMPLS),
                       help="Memory Maze step, all trajectory-identical: 'fast' (native substeps, shared "
                            "textures: ~2x fast_v1), 'fast_v1' (the earlier pure-Python fast step), "
                            "'upstream' (memory-maze as released). (default: %(default)s)")
    group.add_argument("--pos_noise", type=float, default=0.0,
                       help="Std of the Gaussian noise added to the position, in maze cells, for "
                            "--posemb noisygt/noisyfourier. (default: %(default)s)")
    group.add_argument("--seed", type=int, default=None,
                       help="Seed for the mazes, the position noise, the model init and the actions; "
                            "the same seed repeats a run. (default: random)")


def add_agent_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("agent")
    posemb_help = "; ".join(f"'{name}': {text}" for name, text in POSEMBS.items())
    group.add_argument("--posemb", default="none", choices=list(POSEMBS),
                       help=f"Position embedding. {posemb_help}. (default: %(default)s)")
    encoder_help = "; ".join(f"'{name}': {text}" for name, text in ENCODERS.items())
    group.add_argument("--encoder", default="impala", choices=list(ENCODERS),
                       help=f"Frame encoder. {encoder_help}. (default: %(default)s)")
    group.add_argument("--use_lstm", dest="use_lstm", action="store_true", default=True,
                       help="Use the LSTM core (default: on; this is a memory benchmark).")
    group.add_argument("--no_lstm", dest="use_lstm", action="store_false",
                       help="Feed-forward agent without memory (a baseline).")
    group.add_argument("--hidden_size", type=int, default=256,
                       help="Width of the encoder output and of the LSTM. (default: %(default)s)")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--mode", default="train", choices=["train", "test"],
                       help="'train' learns (and resumes a run with the same --xpid); 'test' plays "
                            "--test_episodes episodes with the saved model. (default: %(default)s)")
    group.add_argument("--total_steps", type=int, default=50_000_000,
                       help="Environment steps to train for, over all actors. (default: %(default)s)")
    group.add_argument("--batch_size", type=int, default=8,
                       help="Rollouts per learner update. (default: %(default)s)")
    group.add_argument("--unroll_length", type=int, default=80,
                       help="Steps per rollout; a batch is [unroll_length, batch_size]. (default: %(default)s)")
    group.add_argument("--num_learner_threads", type=int, default=2,
                       help="Learner threads taking batches in turn. (default: %(default)s)")
    group.add_argument("--discounting", type=float, default=0.99, help="Discount gamma. (default: %(default)s)")
    group.add_argument("--entropy_cost", type=float, default=0.0006,
                       help="Weight of the entropy bonus. (default: %(default)s)")
    group.add_argument("--baseline_cost", type=float, default=0.5,
                       help="Weight of the baseline loss. (default: %(default)s)")
    group.add_argument("--reward_clipping", default="abs_one", choices=["abs_one", "none"],
                       help="Clip rewards to [-1, 1] for learning, or not. (default: %(default)s)")
    group.add_argument("--learning_rate", type=float, default=0.00048,
                       help="RMSProp learning rate, decayed linearly to 0 at --total_steps. (default: %(default)s)")
    group.add_argument("--warmup_steps", type=int, default=0,
                       help="Environment steps over which the learning rate first rises linearly from 0. "
                            "RMSProp has no bias correction: its first updates are up to 1/sqrt(1-alpha) "
                            "times larger than later ones and can kill ReLU units at a high learning rate. "
                            "(default: %(default)s, none, as in IMPALA)")
    group.add_argument("--alpha", type=float, default=0.99, help="RMSProp smoothing constant. (default: %(default)s)")
    group.add_argument("--momentum", type=float, default=0.0, help="RMSProp momentum. (default: %(default)s)")
    group.add_argument("--epsilon", type=float, default=0.01, help="RMSProp epsilon. (default: %(default)s)")
    group.add_argument("--grad_norm_clipping", type=float, default=40.0,
                       help="Clip the global gradient norm to this value. (default: %(default)s)")
    group.add_argument("--max_nonfinite_updates", type=int, default=10,
                       help="Stop the run (exit status 1, keeping the last checkpoint) after this many updates "
                            "in a row with a non-finite loss or gradient norm; each is skipped, leaving the "
                            "weights untouched. (default: %(default)s)")


def add_actor_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("actors (MonoBeast)")
    group.add_argument("--num_actors", type=int, default=4,
                       help="Actor processes, each with its own env instance; also the processes that "
                            "--mode test plays its episodes on. (default: %(default)s)")
    group.add_argument("--num_buffers", type=int, default=None,
                       help="Shared-memory rollout buffers. The default keeps two per actor free while "
                            "the learner gathers a batch, so actors never wait for it. "
                            "(default: batch_size + 2 * num_actors)")


def add_system_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("system and outputs")
    group.add_argument("--xpid", default=None,
                       help="Run name; outputs go to SAVEDIR/XPID/. Training with an existing XPID resumes "
                            "it. (default: torchbeast-<date-time> in train mode, the newest run trained on --env in "
                            "test mode)")
    group.add_argument("--savedir", default="./logs", help="Root folder of the runs. (default: %(default)s)")
    group.add_argument("--checkpoint", default=None,
                       help="Checkpoint for --mode test. (default: SAVEDIR/XPID/model.tar)")
    group.add_argument("--gpu_n", type=int, default=0,
                       help="Use cuda:GPU_N when CUDA is available. (default: %(default)s)")
    group.add_argument("--disable_cuda", action="store_true", help="Run on the CPU even when a GPU is present.")
    group.add_argument("--num_threads", type=int, default=None,
                       help="Torch CPU threads of the learner process. (default: the cores the env processes "
                            "on this machine leave free, at least 1)")
    group.add_argument("--test_episodes", type=int, default=10,
                       help="Episodes to play in --mode test. (default: %(default)s)")
    group.add_argument("--allow_env_mismatch", action="store_true",
                       help="Resume or test a checkpoint on an --env other than the one it was trained on.")
    group.add_argument("--record", type=str_to_bool, nargs="?", const=True, default=False,
                       help="In --mode test, write an MP4 of each episode to SAVEDIR/XPID/videos/. "
                            "'--record', '--record True' and '--record False' all work.")
    group.add_argument("--checkpoint_interval", type=float, default=600.0,
                       help="Seconds between checkpoints; the learning curve is also redrawn every minute. "
                            "(default: %(default)s)")
    group.add_argument("--log_interval", type=float, default=5.0,
                       help="Seconds between progress lines. Their SPS counts the steps of the last minute "
                            "(since the start during the first minute). (default: %(default)s)")


Problems = List[str]


def _positive(flags: argparse.Namespace, *names: str) -> Problems:
    """Problems for each flag of `names` (None: unset, allowed) that is not > 0."""
    return [f"--{name} must be positive, got {getattr(flags, name)}" for name in names
            if getattr(flags, name) is not None and getattr(flags, name) <= 0]


def _non_negative(flags: argparse.Namespace, *names: str) -> Problems:
    return [f"--{name} must be >= 0, got {getattr(flags, name)}" for name in names if getattr(flags, name) < 0]


def env_problems(flags: argparse.Namespace) -> Problems:
    from torchbeast.core.environment import env_has_positions

    problems = _non_negative(flags, "pos_noise")
    try:
        env_has_positions(flags.env)  # checks that the id exists
    except ConfigError as e:
        problems.append(str(e))
    return problems


def agent_problems(flags: argparse.Namespace) -> Problems:
    from torchbeast.core.environment import env_has_positions

    problems = _positive(flags, "hidden_size")
    try:
        has_positions = env_has_positions(flags.env)
    except ConfigError:
        has_positions = True  # an unknown --env is the env group's problem
    if flags.posemb != "none" and not has_positions:
        problems.append(
            f"--posemb {flags.posemb} needs positions, but --env {flags.env} has none; use an ExtraObs "
            "id such as memory_maze:MemoryMaze-9x9-ExtraObs-v0 or memory_maze:MemoryMaze-15x15-ExtraObs-v0"
        )
    return problems


def training_problems(flags: argparse.Namespace) -> Problems:
    problems = _positive(flags, "total_steps", "batch_size", "unroll_length", "num_learner_threads",
                         "learning_rate", "max_nonfinite_updates", "epsilon", "grad_norm_clipping")
    problems += _non_negative(flags, "entropy_cost", "baseline_cost", "momentum", "warmup_steps")
    if not 0.0 <= flags.discounting <= 1.0:
        problems.append(f"--discounting must be in [0, 1], got {flags.discounting}")
    if not 0.0 <= flags.alpha < 1.0:
        problems.append(f"--alpha must be in [0, 1), got {flags.alpha}")
    return problems


def actor_problems(flags: argparse.Namespace) -> Problems:
    problems = _positive(flags, "num_actors")
    if flags.num_buffers is not None and flags.num_buffers < flags.batch_size:
        problems.append(f"--num_buffers ({flags.num_buffers}) must be at least --batch_size ({flags.batch_size})")
    if flags.num_buffers is not None and flags.num_buffers < flags.num_actors:
        problems.append(f"--num_buffers ({flags.num_buffers}) must be at least --num_actors ({flags.num_actors})")
    return problems


def default_num_buffers(flags: argparse.Namespace) -> None:
    if flags.num_buffers is None:
        flags.num_buffers = flags.batch_size + 2 * flags.num_actors


def system_problems(flags: argparse.Namespace) -> Problems:
    problems = _positive(flags, "test_episodes", "num_threads", "checkpoint_interval", "log_interval")
    problems += _non_negative(flags, "gpu_n")
    if flags.xpid is not None and (not flags.xpid or os.sep in flags.xpid or flags.xpid in (".", "..")):
        problems.append(f"--xpid must be a plain folder name, got {flags.xpid!r}")
    return problems


def _no_problems(flags: argparse.Namespace) -> Problems:
    return []


def _nothing_to_complete(flags: argparse.Namespace) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class FlagGroup:
    """Flags declared together with the check of their values."""

    add: Callable[[argparse.ArgumentParser], None]
    problems: Callable[[argparse.Namespace], Problems] = _no_problems
    # Fills defaults computed from other flags, once every value has passed the checks.
    complete: Callable[[argparse.Namespace], None] = _nothing_to_complete


ENV = FlagGroup(add_env_flags, env_problems)
AGENT = FlagGroup(add_agent_flags, agent_problems)
TRAINING = FlagGroup(add_training_flags, training_problems)
ACTORS = FlagGroup(add_actor_flags, actor_problems, default_num_buffers)
SYSTEM = FlagGroup(add_system_flags, system_problems)
MONOBEAST = (ENV, AGENT, TRAINING, ACTORS, SYSTEM)


class FlagParser(OneLineErrorParser):
    """The parser of one entry point: its flag groups, in --help order."""

    def __init__(self, prog: str, description: str, groups: Sequence[FlagGroup],
                 hints: Optional[Dict[str, str]] = None) -> None:
        super().__init__(prog=prog, description=description, hints=hints)
        self.groups = tuple(groups)
        for group in self.groups:
            group.add(self)

    def parse_flags(self, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
        """Parses and checks `argv`; raises one ConfigError listing every bad value."""
        flags = self.parse_args(argv)
        problems = [problem for group in self.groups for problem in group.problems(flags)]
        if problems:
            raise ConfigError("; ".join(problems))
        for group in self.groups:
            group.complete(flags)
        return flags
