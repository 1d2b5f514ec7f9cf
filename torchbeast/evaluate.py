"""Evaluate trained runs against each other, two baselines and the published Memory Maze scores.

Every agent plays the same episodes: episode i on the env made with seed SEED + i. Runs are grouped
by the env they were trained on (read from their checkpoints), with one table per env: mean return,
standard error, and % of the oracle and human scores published with Memory Maze, for each run, for
a uniformly random policy (unless --no_random) and for the no-memory runs named by --no_memory
(trained with --no_lstm). Episodes run in parallel processes (--num_workers).

    python -m torchbeast.evaluate --xpids noisygt-s1 gt-s1 none-s1 --no_memory nolstm-s1 --episodes 20
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from torchbeast.core.cli import run_command, setup_logging
from torchbeast.core.episode_pool import EpisodeTask, play_episodes
from torchbeast.core.evaluation_report import AgentResults, format_table, write_results
from torchbeast.core.flags import ENV_IMPLS, OneLineErrorParser, str_to_bool
from torchbeast.core.play import check_agent_fits_env, load_agent
from torchbeast.core.scores import canonical_env_id
from torchbeast.errors import ConfigError


def parser() -> OneLineErrorParser:
    p = OneLineErrorParser(prog="python -m torchbeast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--xpids", nargs="+", required=True, metavar="XPID",
                   help="Runs to evaluate: their checkpoints SAVEDIR/XPID/model.tar.")
    p.add_argument("--savedir", default="./logs", help="Root folder of the runs. (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=10,
                   help="Episodes per agent (and per baseline). (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="Episode i of every agent is played on the env made with seed SEED + i; the actions "
                        "are sampled with the same seed. (default: %(default)s)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                   help="Processes playing episodes, one torch thread each; a Memory Maze env takes about "
                        "1.1 GB. (default: the number of cores, %(default)s)")
    p.add_argument("--random", dest="random", action="store_true", default=True,
                   help="Also play a uniformly random policy on each env (default: on).")
    p.add_argument("--no_random", dest="random", action="store_false", help="Skip the random baseline.")
    p.add_argument("--no_memory", nargs="+", default=[], metavar="XPID",
                   help="Runs trained with --no_lstm, shown as the no-memory baseline of their env.")
    p.add_argument("--record", type=str_to_bool, nargs="?", const=True, default=False,
                   help="Write an MP4 of each episode to OUT/videos/ENV/AGENT/.")
    p.add_argument("--out", default=None, help="Folder for evaluation.csv, evaluation.json and videos. "
                                               "(default: SAVEDIR/evaluation)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="Cut each episode after this many steps, for quick checks; the returns are then not "
                        "comparable to the published scores. (default: whole episodes)")
    p.add_argument("--env_impl", default="fast", choices=list(ENV_IMPLS),
                   help="Memory Maze step, all trajectory-identical: 'fast', 'fast_v1' (the earlier fast "
                        "step) or 'upstream'. (default: %(default)s)")
    return p


def flag_problems(flags: argparse.Namespace) -> List[str]:
    problems = [f"--{name} must be positive, got {getattr(flags, name)}"
                for name in ("episodes", "num_workers", "max_steps")
                if getattr(flags, name) is not None and getattr(flags, name) <= 0]
    named = list(flags.xpids) + list(flags.no_memory)
    for xpid in named:
        if not xpid or os.sep in xpid or xpid in (".", ".."):
            problems.append(f"--xpids/--no_memory: a run name must be a plain folder name, got {xpid!r}")
    repeated = sorted({xpid for xpid in named if named.count(xpid) > 1})
    if repeated:
        problems.append(f"--xpids/--no_memory: {', '.join(repeated)} named more than once")
    return problems


def _agent(flag: str, savedir: str, xpid: str, kind: str) -> Tuple[AgentResults, float]:
    """A run's results to fill, and the position noise it was trained with; ConfigError naming `flag`."""
    run_dir = os.path.join(savedir, xpid)
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{flag} {xpid}: no run {run_dir} (is --savedir {savedir} right?)")
    checkpoint = os.path.abspath(os.path.join(run_dir, "model.tar"))
    if not os.path.isfile(checkpoint):
        raise ConfigError(f"{flag} {xpid}: {checkpoint} does not exist (the run has saved no checkpoint yet)")
    try:
        _, state = load_agent(checkpoint)
        trained = state["flags"]
        env_id = trained["env"]
        check_agent_fits_env(state, env_id, checkpoint)
    except ConfigError as e:
        raise ConfigError(f"{flag} {xpid}: {e}") from None
    except (KeyError, TypeError):
        raise ConfigError(f"{flag} {xpid}: checkpoint {checkpoint} does not record its --env") from None
    if kind == "no_memory" and state["model_config"].get("use_lstm", True):
        raise ConfigError(f"--no_memory {xpid}: the run was trained with the LSTM; name a run trained "
                          "with --no_lstm")
    results = AgentResults(env_id=canonical_env_id(env_id), agent=xpid, kind=kind, xpid=xpid,
                           checkpoint=checkpoint, trained_steps=int(state["step"]))
    return results, float(trained.get("pos_noise") or 0.0)


def _video_path(out_dir: str, results: AgentResults, episode: int) -> str:
    env_name = results.env_id.split(":", 1)[-1]
    agent_dir = results.xpid if results.xpid is not None else "baseline-random"
    return os.path.join(out_dir, "videos", env_name, agent_dir, f"episode_{episode + 1:03d}.mp4")


def plan(flags: argparse.Namespace, out_dir: str) -> Tuple[List[AgentResults], List[Tuple[EpisodeTask, int]]]:
    """The agents (runs, then baselines, per env in the order first named) and their episode tasks,
    each with the index of the agent it belongs to."""
    savedir = os.path.expanduser(flags.savedir)
    named = [(*_agent("--xpids", savedir, x, "run"), x) for x in flags.xpids]
    named += [(*_agent("--no_memory", savedir, x, "no_memory"), x) for x in flags.no_memory]
    envs = list(dict.fromkeys(results.env_id for results, _, _ in named))
    agents: List[Tuple[AgentResults, float]] = []
    for env_id in envs:
        agents += [(results, noise) for results, noise, _ in named if results.env_id == env_id]
        if flags.random:
            agents.append((AgentResults(env_id=env_id, agent="random", kind="random"), 0.0))
    tasks = []
    for index, (results, pos_noise) in enumerate(agents):
        for episode in range(flags.episodes):
            video = _video_path(out_dir, results, episode) if flags.record else None
            tasks.append((EpisodeTask(agent=results.agent, checkpoint=results.checkpoint, env_id=results.env_id,
                                      seed=flags.seed + episode, pos_noise=pos_noise, impl=flags.env_impl,
                                      max_steps=flags.max_steps, video_path=video), index))
    return [results for results, _ in agents], tasks


class Progress:
    """"k/n episodes played": redrawn in place on a terminal, else one line every 30 s and at the end."""

    def __init__(self, total: int) -> None:
        self.total, self.start, self.last_line = total, time.monotonic(), time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        now = time.monotonic()
        text = f"{done}/{self.total} episodes played ({now - self.start:.0f} s)"
        if self.tty:
            sys.stderr.write("\r" + text + ("\n" if done == self.total else ""))
        elif done == self.total or now - self.last_line >= 30:
            sys.stderr.write(text + "\n")
            self.last_line = now
        sys.stderr.flush()


def evaluate(flags: argparse.Namespace) -> Dict[str, str]:
    """Plays every agent's episodes, prints the tables and writes the files; returns their paths."""
    out_dir = flags.out or os.path.join(os.path.expanduser(flags.savedir), "evaluation")
    agents, tasks = plan(flags, out_dir)
    agent_of = {task: index for task, index in tasks}
    workers = min(flags.num_workers, len(tasks))
    print(f"Playing {len(tasks)} episodes ({len(agents)} agents x {flags.episodes}) over {workers} processes",
          file=sys.stderr, flush=True)
    finished = []
    progress = Progress(len(tasks))
    for result in play_episodes([task for task, _ in tasks], workers):
        finished.append(result)
        progress.update(len(finished))
    for result in sorted(finished, key=lambda r: r.task.seed):
        results = agents[agent_of[result.task]]
        results.seeds.append(result.task.seed)
        results.returns.append(result.episode_return)
        results.lengths.append(result.length)
        if result.video is not None:
            results.videos.append(result.video)

    for env_id in dict.fromkeys(results.env_id for results in agents):
        print(format_table([r for r in agents if r.env_id == env_id], flags.seed, flags.max_steps) + "\n")
    settings = dict(savedir=os.path.abspath(os.path.expanduser(flags.savedir)), episodes=flags.episodes,
                    seed=flags.seed, max_steps=flags.max_steps, env_impl=flags.env_impl)
    paths = write_results(out_dir, agents, settings)
    print(f"Wrote {paths['csv']} and {paths['json']}")
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()

    def body() -> None:
        flags = parser().parse_args(argv)
        problems = flag_problems(flags)
        if problems:
            raise ConfigError("; ".join(problems))
        evaluate(flags)

    return run_command("evaluate", body)


if __name__ == "__main__":
    sys.exit(main())
