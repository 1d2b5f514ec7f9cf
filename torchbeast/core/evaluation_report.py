"""The results of `python -m torchbeast.evaluate`: one table per env, and CSV and JSON files.

Each row is one agent on one env: a trained run, a no-memory run (a baseline), or the uniformly
random policy (a baseline), all played on the same seeds. "% oracle" and "% human" divide the mean
return by the scores published with Memory Maze for that maze size (`torchbeast.core.scores`).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

from torchbeast.core.atomic_file import replaced, write_json
from torchbeast.core.scores import PublishedScores, percent_of, published_scores, summarize
from torchbeast.core.text_table import number, text_table

KINDS = ("run", "no_memory", "random")
_LABEL_SUFFIX = {"run": "", "no_memory": " (no-memory baseline)", "random": " (baseline)"}

CSV_FIELDS = ["env", "agent", "kind", "xpid", "checkpoint", "trained_steps", "episodes", "mean_return",
              "stderr_return", "std_return", "pct_oracle", "pct_human", "oracle_score", "human_score",
              "first_seed", "max_steps"]


@dataclasses.dataclass
class AgentResults:
    """One agent's episodes on one env, in seed order."""

    env_id: str
    agent: str  # the XPID, or "random"
    kind: str  # one of KINDS
    xpid: Optional[str] = None
    checkpoint: Optional[str] = None
    trained_steps: Optional[int] = None
    seeds: List[int] = dataclasses.field(default_factory=list)
    returns: List[float] = dataclasses.field(default_factory=list)
    lengths: List[int] = dataclasses.field(default_factory=list)
    videos: List[str] = dataclasses.field(default_factory=list)

    def row(self, first_seed: int, max_steps: Optional[int]) -> Dict[str, Any]:
        """Summary fields (CSV_FIELDS)."""
        summary = summarize(self.returns)
        scores = published_scores(self.env_id)
        oracle = scores.oracle if scores else None
        human = scores.human if scores else None
        return dict(env=self.env_id, agent=self.agent, kind=self.kind, xpid=self.xpid, checkpoint=self.checkpoint,
                    trained_steps=self.trained_steps, episodes=summary.episodes, mean_return=summary.mean,
                    stderr_return=summary.stderr, std_return=summary.std,
                    pct_oracle=percent_of(summary.mean, oracle), pct_human=percent_of(summary.mean, human),
                    oracle_score=oracle, human_score=human, first_seed=first_seed, max_steps=max_steps)


def _steps(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:,}"


def _title(env_id: str, scores: Optional[PublishedScores], episodes: int, first_seed: int,
           max_steps: Optional[int]) -> str:
    published = (f"human {scores.human:g}, oracle {scores.oracle:g}" if scores
                 else "no published human/oracle scores")
    cut = ""
    if max_steps:
        cut = f"; episodes cut at {max_steps} steps" + (", not comparable to the published scores" if scores else "")
    return f"{env_id}: {episodes} episodes per agent, seeds {first_seed}-{first_seed + episodes - 1} ({published}){cut}"


def format_table(results: Sequence[AgentResults], first_seed: int, max_steps: Optional[int]) -> str:
    """A plain-text table of `results` (all on one env)."""
    env_id = results[0].env_id
    rows = [r.row(first_seed, max_steps) for r in results]
    header = ["agent", "trained steps", "episodes", "mean return", "stderr", "% oracle", "% human"]
    cells = [[row["agent"] + _LABEL_SUFFIX[row["kind"]], _steps(row["trained_steps"]),
              str(row["episodes"]), number(row["mean_return"]), number(row["stderr_return"]),
              number(row["pct_oracle"], 1), number(row["pct_human"], 1)] for row in rows]
    episodes = max(row["episodes"] for row in rows)
    return "\n".join([_title(env_id, published_scores(env_id), episodes, first_seed, max_steps),
                      text_table(header, cells)])


def write_results(out_dir: str, results: Sequence[AgentResults], settings: Dict[str, Any]) -> Dict[str, str]:
    """Writes OUT/evaluation.csv (one summary row per agent and env) and OUT/evaluation.json (the same
    with every episode's seed, return, length and video, and the settings); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    first_seed, max_steps = settings["seed"], settings.get("max_steps")
    paths = {"csv": os.path.join(out_dir, "evaluation.csv"), "json": os.path.join(out_dir, "evaluation.json")}
    with replaced(paths["csv"], newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow({k: "" if v is None else v for k, v in r.row(first_seed, max_steps).items()})
    agents = [dict(r.row(first_seed, max_steps), seeds=r.seeds, returns=r.returns, lengths=r.lengths,
                   videos=r.videos) for r in results]
    write_json(paths["json"], dict(settings=settings, results=agents))
    return paths
