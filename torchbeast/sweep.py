"""Sweeps: one training run per point of a grid of trainer flags, here or as a Slurm array job.

    python -m torchbeast.sweep posemb=none,gt,noisygt pos_noise=0,0.5 seed=1,2 -- \\
        --env memory_maze:MemoryMaze-9x9-ExtraObs-v0 --total_steps 1000000
    python -m torchbeast.sweep --slurm sweep.sbatch posemb=none,gt seed=1,2 -- --env ...

Each grid item is KEY=V1,V2,... with KEY a trainer flag without its dashes; the runs are the
product of the values, in the order given (the last key varies fastest). Everything after `--`
goes to every run. Each run is SAVEDIR/XPID with an XPID made of its grid values
(`posemb-gt_pos_noise-0.5_seed-1`), so a sweep run again finds its runs: here, a finished run
(its checkpoint has --total_steps steps) is skipped and an unfinished one resumes; on Slurm a
requeued task resumes the same way. Every run's flags are checked before the first one starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torchbeast.core.child_processes import preexec_die_with_parent
from torchbeast.core.cli import run_command
from torchbeast.errors import ConfigError

TRAINERS = {"monobeast": "torchbeast.monobeast", "polybeast": "torchbeast.polybeast"}
# Flags the sweep sets itself for every run.
OWNED_FLAGS = ("xpid", "savedir", "mode")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_XPID = 200  # below the usual 255-byte file name limit, with room for a suffix

Grid = List[Tuple[str, List[str]]]
SbatchOptions = Dict[str, Optional[str]]


@dataclasses.dataclass(frozen=True)
class Run:
    """One grid point: its xpid, the trainer's arguments and the steps that make it finished."""

    xpid: str
    point: Dict[str, str]
    argv: List[str]
    total_steps: int
    flags: argparse.Namespace


def parse_grid(items: Sequence[str]) -> Grid:
    """`["posemb=none,gt", "seed=1,2"]` -> `[("posemb", ["none", "gt"]), ("seed", ["1", "2"])]`."""
    if not items:
        raise ConfigError("no grid: give at least one KEY=V1,V2,... (e.g. seed=1,2)")
    grid: Grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"grid item {item!r}: expected KEY=V1,V2,... (e.g. posemb=none,gt)")
        key = key.lstrip("-")
        split = values.split(",")
        if any(not value.strip() for value in split):
            raise ConfigError(f"grid item {item!r}: empty value (values are separated by single commas)")
        if any(key == seen for seen, _ in grid):
            raise ConfigError(f"grid key {key!r} appears twice")
        if len(set(split)) != len(split):
            raise ConfigError(f"grid item {item!r}: a value appears twice")
        grid.append((key, [value.strip() for value in split]))
    return grid


def grid_points(grid: Grid) -> List[Dict[str, str]]:
    """The product of the grid's values, as {key: value} in grid order (the last key fastest)."""
    keys = [key for key, _ in grid]
    return [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in grid))]


def xpid_for(point: Dict[str, str], prefix: str = "") -> str:
    """`{"posemb": "gt", "seed": "1"}` -> `posemb-gt_seed-1`: readable, deterministic, file-name safe.

    Characters other than letters, digits and `._+-` become `-`; a name too long for a file
    system keeps its start and ends with a hash of the whole point.
    """
    name = prefix + "_".join(f"{key}-{value}" for key, value in point.items())
    name = _UNSAFE.sub("-", name)
    if len(name) > _MAX_XPID:
        digest = hashlib.sha1(repr(sorted(point.items())).encode()).hexdigest()[:10]
        name = f"{name[:_MAX_XPID - 11]}-{digest}"
    return name


def point_args(point: Dict[str, str]) -> List[str]:
    return [arg for key, value in point.items() for arg in (f"--{key}", value)]


def trainer_parser(trainer: str) -> argparse.ArgumentParser:
    """The flag parser of `python -m torchbeast.TRAINER`, raising ConfigError instead of exiting."""
    if trainer == "polybeast":
        from torchbeast.polybeast import make_parser

        parser = make_parser()
    else:
        from torchbeast.core import flags as flags_lib

        parser = flags_lib.FlagParser(f"python -m {TRAINERS[trainer]}", "", flags_lib.MONOBEAST)

    def error(message: str) -> None:
        raise ConfigError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def _flag_names(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {option[2:]: action for option, action in parser._option_string_actions.items()
            if option.startswith("--")}


def check_keys(grid: Grid, common: Sequence[str], parser: argparse.ArgumentParser, trainer: str) -> None:
    """Every grid key is a trainer flag that takes a value; none is set twice or owned by the sweep."""
    known = _flag_names(parser)
    for key, _ in grid:
        if key in OWNED_FLAGS:
            raise ConfigError(f"grid key {key!r}: the sweep sets --{key} itself")
        if key not in known or key == "help":
            raise ConfigError(f"grid key {key!r} is not a {trainer} flag (see python -m {TRAINERS[trainer]} --help)")
        if known[key].nargs == 0:
            raise ConfigError(f"grid key {key!r}: --{key} takes no value; put it after -- to set it for every run")
        if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in common):
            raise ConfigError(f"--{key} is both a grid key and a flag after --")
    for name in OWNED_FLAGS:
        if any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in common):
            raise ConfigError(f"--{name} after --: the sweep sets it itself (use the sweep's --savedir)")


def make_runs(grid: Grid, common: Sequence[str], trainer: str, savedir: str, prefix: str = "") -> List[Run]:
    """The runs of the grid, each with its flags parsed and checked by the trainer's parser."""
    parser = trainer_parser(trainer)
    check_keys(grid, common, parser, trainer)
    runs: List[Run] = []
    by_xpid: Dict[str, Dict[str, str]] = {}
    for point in grid_points(grid):
        xpid = xpid_for(point, prefix)
        if xpid in by_xpid:
            raise ConfigError(f"grid points {by_xpid[xpid]} and {point} get the same xpid {xpid!r}; "
                              "use values that differ in letters or digits")
        by_xpid[xpid] = point
        argv = [*common, *point_args(point), "--savedir", savedir, "--xpid", xpid]
        try:
            flags = parser.parse_flags(argv)  # type: ignore[attr-defined]
        except ConfigError as e:
            raise ConfigError(f"run {xpid}: {e}") from None
        runs.append(Run(xpid=xpid, point=point, argv=argv, total_steps=flags.total_steps, flags=flags))
    return runs


def finished_step(run_dir: str, total_steps: int) -> Optional[int]:
    """The step of the run's checkpoint when it has reached `total_steps`, else None.

    The checkpoint is what a resume starts from, so it alone says how far a run got: logs.csv
    can be ahead of it after a crash, and a larger --total_steps makes a finished run unfinished.
    """
    from torchbeast.core.checkpoint import load_checkpoint

    path = os.path.join(run_dir, "model.tar")
    if not os.path.exists(path):
        return None
    try:
        step = int(load_checkpoint(path)["step"])
    except ConfigError:
        return None  # unreadable: the trainer says why when it tries to resume it
    return step if step >= total_steps else None


def _command(trainer: str, run: Run) -> List[str]:
    return [sys.executable, "-m", TRAINERS[trainer], *run.argv]


def _run_to_end(command: List[str]) -> int:
    """Runs one trainer until it exits; KeyboardInterrupt afterwards if the sweep was interrupted.

    Ctrl-C reaches the trainer too (one process group): the sweep only waits while it saves. A
    SIGTERM sent to the sweep alone is passed on, so `kill SWEEP_PID` also stops the run cleanly.
    """
    interrupted: List[int] = []
    procs: List[subprocess.Popen] = []

    def on_signal(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        if signum == signal.SIGTERM and procs and procs[0].poll() is None:
            procs[0].send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not interrupted:
            # The run gets SIGTERM (saves, exits 143) if the sweep dies, even by SIGKILL.
            procs.append(subprocess.Popen(command, preexec_fn=preexec_die_with_parent(signal.SIGTERM)))
            code = procs[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if interrupted:
        raise KeyboardInterrupt
    return code


def run_here(runs: List[Run], trainer: str, savedir: str, dry_run: bool = False) -> List[str]:
    """Runs the unfinished runs one after another; returns the xpids of those that failed.

    With `dry_run`, prints each command (and which runs are finished) instead."""
    failed: List[str] = []
    skipped = 0
    for index, run in enumerate(runs, 1):
        step = finished_step(os.path.join(savedir, run.xpid), run.total_steps)
        command = _command(trainer, run)
        if step is not None:
            print(f"# [{index}/{len(runs)}] {run.xpid}: finished (step {step} >= --total_steps "
                  f"{run.total_steps}), skipped", flush=True)
            skipped += 1
            continue
        if dry_run:
            print(shlex.join(command), flush=True)
            continue
        print(f"# [{index}/{len(runs)}] {run.xpid}: {shlex.join(command)}", flush=True)
        code = _run_to_end(command)
        if code != 0:
            print(f"# [{index}/{len(runs)}] {run.xpid}: exited with status {code}", flush=True)
            failed.append(run.xpid)
    if not dry_run:
        print(f"# {len(runs)} runs in {savedir}: {len(runs) - skipped - len(failed)} trained, {skipped} finished "
              f"before, {len(failed)} failed", flush=True)
    return failed


def default_sbatch_options(runs: List[Run], trainer: str, savedir: str, job_name: str) -> SbatchOptions:
    """#SBATCH options sized for the largest run; a value of None is an option without a value."""
    env_processes = max(getattr(run.flags, "num_servers" if trainer == "polybeast" else "num_actors") for run in runs)
    options: SbatchOptions = {
        "job-name": job_name,
        "array": f"0-{len(runs) - 1}",
        "time": "24:00:00",
        "cpus-per-task": str(env_processes + 2),  # one per env process, two for the learner
        "mem": f"{4 + (3 * env_processes + 1) // 2}G",  # a Memory Maze env process holds ~1.1 GB
        "gres": "gpu:1",
        "output": os.path.join(savedir, "slurm", "%A_%a.out"),
        "open-mode": "append",  # a requeued task appends to its log
        "requeue": None,
        "signal": "B:USR1@300",  # five minutes before the time limit: save, then requeue
    }
    if all(run.flags.disable_cuda for run in runs):
        del options["gres"]
    return options


def apply_sbatch_overrides(options: SbatchOptions, items: Sequence[str]) -> SbatchOptions:
    """`--sbatch KEY=VALUE` sets an option, `KEY=` drops it, a bare `KEY` sets one without a value."""
    options = dict(options)
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"--sbatch {item!r}: expected KEY=VALUE, e.g. --sbatch time=48:00:00")
        if sep and not value:
            options.pop(key, None)
        else:
            options[key] = value if sep else None
    return options


_SLURM_TEMPLATE = """\
#!/bin/bash
# Slurm array job written by `python -m torchbeast.sweep`: one task per grid point ({count} runs).
#   sbatch {script}                 all runs
#   sbatch --array=0,3 {script}     some of them (task ids below)
# A task preempted or near its time limit saves, is requeued and resumes from its checkpoint; a
# task whose run is already finished exits at once. Resources: edit the #SBATCH lines.
{sbatch}

# The python that has torchbeast installed: sbatch passes on the submitting shell's environment,
# so activate the venv (or conda env) before sbatch, or set PYTHON.
PYTHON="${{PYTHON:-python}}"
TRAINER={trainer_module}
SAVEDIR={savedir}
# Flags every run gets.
COMMON=({common})

task="${{SLURM_ARRAY_TASK_ID:?not set: submit this script with sbatch}}"
case "$task" in
{cases}
  *) echo "task $task: no such grid point (tasks are 0-{last})" >&2; exit 2 ;;
esac

cmd=("$PYTHON" -m "$TRAINER" "${{COMMON[@]}}" "${{RUN[@]}}" --savedir "$SAVEDIR")
echo "task $task on $(hostname): ${{cmd[*]}}"

# Near the time limit Slurm sends USR1 (--signal above): the trainer saves on SIGTERM, then the
# task is requeued. Preemption sends SIGTERM to the trainer directly, and --requeue requeues it.
requeue() {{
  echo "task $task: time limit near: saving and requeueing"
  kill -TERM "$child" 2>/dev/null
  wait "$child"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{task}}"
  exit 0
}}
trap requeue USR1
"${{cmd[@]}}" &
child=$!
wait "$child"  # returns early when USR1 arrives, and requeue() runs
exit $?
"""


def slurm_script(runs: List[Run], trainer: str, savedir: str, common: Sequence[str], options: SbatchOptions,
                 script_name: str = "FILE") -> str:
    """The text of a Slurm array job script running `runs`, task i running runs[i]."""
    sbatch = "\n".join(f"#SBATCH --{key}" + ("" if value is None else f"={value}") for key, value in options.items())
    cases = "\n".join(f"  {index}) RUN=({shlex.join([*point_args(run.point), '--xpid', run.xpid])}) ;;"
                      for index, run in enumerate(runs))
    return _SLURM_TEMPLATE.format(count=len(runs), script=script_name, sbatch=sbatch,
                                  trainer_module=TRAINERS[trainer], savedir=shlex.quote(savedir),
                                  common=shlex.join(common), cases=cases, last=len(runs) - 1)


def make_parser() -> argparse.ArgumentParser:
    from torchbeast.core.flags import OneLineErrorParser

    parser = OneLineErrorParser(
        prog="python -m torchbeast.sweep",
        usage="python -m torchbeast.sweep [options] KEY=V1,V2,... [KEY=...] -- TRAINER_FLAGS...",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m torchbeast.sweep posemb=none,gt seed=1,2 -- --env "
               "memory_maze:MemoryMaze-9x9-ExtraObs-v0 --total_steps 1000000")
    parser.add_argument("grid", nargs="*", metavar="KEY=V1,V2,...",
                        help="A trainer flag without its dashes and the values it takes.")
    parser.add_argument("--trainer", default="monobeast", choices=list(TRAINERS),
                        help="python -m torchbeast.TRAINER trains each run. (default: %(default)s)")
    parser.add_argument("--savedir", default="./logs", help="Root folder of the runs. (default: %(default)s)")
    parser.add_argument("--prefix", default="", help="Put before every xpid, e.g. 'ablation1_'. (default: none)")
    parser.add_argument("--slurm", default=None, metavar="FILE",
                        help="Write a Slurm array job script to FILE instead of running here.")
    parser.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                        help="With --slurm: set an #SBATCH option, e.g. --sbatch time=48:00:00 --sbatch "
                             "partition=gpu; an empty VALUE drops a default one (--sbatch gres=).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the command of every unfinished run instead of running it.")
    return parser


def split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Sweep arguments before the first `--`, trainer flags after it."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    sweep_argv, common = split_argv(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_intermixed_args(sweep_argv)
    failed: List[str] = []

    def body() -> None:
        savedir = os.path.abspath(os.path.expanduser(args.savedir))
        grid = parse_grid(args.grid)
        runs = make_runs(grid, common, args.trainer, savedir, args.prefix)
        if args.slurm is None:
            failed.extend(run_here(runs, args.trainer, savedir, dry_run=args.dry_run))
            return
        options = default_sbatch_options(runs, args.trainer, savedir, job_name=args.prefix.rstrip("_-") or "sweep")
        options = apply_sbatch_overrides(options, args.sbatch)
        os.makedirs(os.path.join(savedir, "slurm"), exist_ok=True)  # Slurm does not create --output's folder
        script = slurm_script(runs, args.trainer, savedir, common, options, script_name=args.slurm)
        with open(args.slurm, "w") as f:
            f.write(script)
        os.chmod(args.slurm, 0o755)
        print(f"wrote {args.slurm}: {len(runs)} runs, submit with: sbatch {shlex.quote(args.slurm)}")

    status = run_command("sweep", body)
    if status == 0 and failed:
        print(f"sweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
