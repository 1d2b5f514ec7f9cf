"""python -m torchbeast.plot: the aggregation over runs, the figures from fake runs, bad input."""
import csv
import json
import pathlib

import numpy as np
import pytest
from cli import run_module

from torchbeast import plot
from torchbeast.core.run_outputs import LOG_FIELDS

MAZE9 = "memory_maze:MemoryMaze-9x9-ExtraObs-v0"
MAZE15 = "memory_maze:MemoryMaze-15x15-ExtraObs-v0"


def fake_run(savedir, xpid, env, posemb, rows, seed=1):
    """A run folder with meta.json and a logs.csv of (step, mean return or None, episodes) rows."""
    run = savedir / xpid
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"flags": {"env": env, "posemb": posemb, "seed": seed}, "starts": []}))
    with open(run / "logs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for step, mean_return, episodes in rows:
            writer.writerow({"step": step, "time": 0, "sps": 100, "episodes": episodes,
                             "mean_episode_return": "" if mean_return is None else mean_return})
    return run


def linear_rows(slope, steps=100_000, every=1000):
    """An episode ends at every other update, its return `slope` * step / 1000."""
    return [(s, slope * s / 1000 if (s // every) % 2 == 0 else None, 1 if (s // every) % 2 == 0 else 0)
            for s in range(every, steps + 1, every)]


def test_aggregate_mean_minmax_and_standard_error():
    values = np.array([[1.0, 2.0, np.nan, np.nan], [3.0, 6.0, 5.0, np.nan]])
    mean, low, high = plot.aggregate(values, "minmax")
    np.testing.assert_allclose(mean[:3], [2.0, 4.0, 5.0])
    np.testing.assert_allclose(low[:3], [1.0, 2.0, 5.0])
    np.testing.assert_allclose(high[:3], [3.0, 6.0, 5.0])
    assert np.isnan(mean[3]) and np.isnan(low[3]) and np.isnan(high[3])
    mean, low, high = plot.aggregate(values, "sem")
    np.testing.assert_allclose(mean[:3] - low[:3], [1.0, 2.0, 0.0])  # std(1, 3) / sqrt(2) = 1; one run: 0
    np.testing.assert_allclose(high[:3] - mean[:3], [1.0, 2.0, 0.0])


def test_smoothing_weights_episodes_within_the_window():
    run = plot.RunCurve("r", {}, steps=np.array([10, 20, 30]), returns=np.array([1.0, 4.0, 10.0]),
                        episodes=np.array([1.0, 3.0, 1.0]))
    values = plot.smoothed(run, np.array([5.0, 10.0, 20.0, 30.0, 45.0]), window=15)
    np.testing.assert_allclose(values[1:4], [1.0, (1 + 12) / 4, (12 + 10) / 4])
    assert np.isnan(values[0]) and np.isnan(values[4])  # no episode in (-10, 5] nor in (30, 45]


def test_groups_by_env_and_flag_and_means_over_seeds(tmp_path):
    fake_run(tmp_path, "gt1", MAZE9, "gt", linear_rows(2.0), seed=1)
    fake_run(tmp_path, "gt2", MAZE9, "gt", linear_rows(4.0), seed=2)
    fake_run(tmp_path, "none1", MAZE9, "none", linear_rows(1.0, steps=60_000))
    fake_run(tmp_path, "big", MAZE15, "gt", linear_rows(1.0))
    runs = [plot.load_run(path) for path in plot.find_runs(str(tmp_path), None)]
    groups = plot.group_runs(runs, ["posemb"])
    assert list(groups) == [MAZE15, MAZE9]
    assert list(groups[MAZE9]) == ["posemb=gt", "posemb=none"]
    assert [run.xpid for run in groups[MAZE9]["posemb=gt"]] == ["gt1", "gt2"]

    curve = plot.group_curve(groups[MAZE9]["posemb=gt"], window=2000, points=11)
    np.testing.assert_allclose(curve["steps"], np.linspace(2000, 100_000, 11))  # first to last episode
    # An episode ends every 2000 steps in each run: the window holds the last one, at step e.
    e = np.floor(curve["steps"] / 2000) * 2000 / 1000
    np.testing.assert_allclose(curve["mean"], 3.0 * e)  # slopes 2 and 4
    np.testing.assert_allclose(curve["low"], 2.0 * e)
    np.testing.assert_allclose(curve["high"], 4.0 * e)
    assert curve["runs"] == 2
    # A group is drawn up to its shortest run, from where a whole window has passed.
    assert plot.group_curve(groups[MAZE9]["posemb=none"], None)["steps"][-1] == 60_000
    assert plot.group_curve(groups[MAZE9]["posemb=gt"], window=5000)["steps"][0] == 5000


def test_final_returns_compare_every_group_at_the_step_where_the_shortest_run_ends(tmp_path):
    fake_run(tmp_path, "gt1", MAZE9, "gt", linear_rows(2.0), seed=1)
    fake_run(tmp_path, "gt2", MAZE9, "gt", linear_rows(4.0), seed=2)
    fake_run(tmp_path, "none1", MAZE9, "none", linear_rows(1.0, steps=60_000))
    fake_run(tmp_path, "late", MAZE9, "noisygt", [(1000, None, 0), (70_000, None, 0)])  # no episode yet
    groups = plot.group_runs([plot.load_run(path) for path in plot.find_runs(str(tmp_path), None)], ["posemb"])
    table = {entry.label: entry.row() for entry in plot.final_returns(groups[MAZE9], window=4000)}
    # At step 60k, episodes ended at 58k and 60k (returns slope * 58 and slope * 60).
    assert table["posemb=gt"] == dict(group="posemb=gt", runs=2, step=60_000, window=4000, mean=3.0 * 59,
                                      min=2.0 * 59, max=4.0 * 59)
    assert table["posemb=none"]["mean"] == 59.0 and table["posemb=none"]["runs"] == 1
    assert table["posemb=noisygt"]["runs"] == 0 and table["posemb=noisygt"]["mean"] is None


def test_nice_window():
    assert plot.nice_window(2_000_000) == 100_000
    assert plot.nice_window(900_000) == 20_000
    assert plot.nice_window(10) == 1


def write_evaluation(path):
    results = [dict(env=MAZE9, agent="gt1", kind="run", xpid="gt1", episodes=10, mean_return=12.0, stderr_return=1.0),
               dict(env=MAZE9, agent="none1", kind="run", xpid="none1", episodes=10, mean_return=6.0,
                    stderr_return=0.8),
               dict(env=MAZE9, agent="random", kind="random", xpid=None, episodes=10, mean_return=0.5,
                    stderr_return=0.2)]
    path.write_text(json.dumps({"settings": {}, "results": results}))


def test_cli_writes_a_png_and_an_svg_per_env(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "gt1", MAZE9, "gt", linear_rows(2.0))
    fake_run(runs, "none1", MAZE9, "none", linear_rows(1.0))
    fake_run(runs, "big", MAZE15, "gt", linear_rows(1.0))
    write_evaluation(tmp_path / "evaluation.json")
    out = tmp_path / "figures"
    proc = run_module("torchbeast.plot", "--savedir", runs, "--group_by", "posemb", "--out", out, "--smooth", 5000,
                      "--evaluation", tmp_path / "evaluation.json", timeout=120)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*(f"{kind}_{env}.{ext}" for ext in ("png", "svg") for kind, env in [
        ("learning_curves", "MemoryMaze-9x9-ExtraObs-v0"), ("learning_curves", "MemoryMaze-15x15-ExtraObs-v0"),
        ("evaluation", "MemoryMaze-9x9-ExtraObs-v0")]),
        "final_returns_MemoryMaze-9x9-ExtraObs-v0.csv", "final_returns_MemoryMaze-15x15-ExtraObs-v0.csv"])
    assert all((out / name).stat().st_size > 1000 for name in names if name.endswith((".png", ".svg")))
    assert proc.stdout.count(str(out)) == 8
    with open(out / "final_returns_MemoryMaze-9x9-ExtraObs-v0.csv", newline="") as f:
        rows = {row["group"]: row for row in csv.DictReader(f)}
    assert rows["posemb=gt"]["step"] == "100000"
    assert float(rows["posemb=gt"]["mean"]) == pytest.approx(2.0 * 98)  # episodes at 96k, 98k and 100k
    assert "MemoryMaze-9x9-ExtraObs-v0: mean return of the episodes that ended in steps (95000, 100000]" in proc.stdout


def test_evaluation_bars_carry_their_values_as_text(tmp_path):
    """Returns near 0 beside the human and oracle lines are too short to read as bars alone."""
    import matplotlib

    write_evaluation(tmp_path / "evaluation.json")
    rows = plot.read_evaluation(str(tmp_path / "evaluation.json"))[MAZE9]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG
        paths = plot.plot_evaluation(MAZE9, rows, str(tmp_path), colours={}, labels={})
    svg = next(p for p in paths if p.endswith(".svg"))
    text = pathlib.Path(svg).read_text()
    for value in ("12.00", "± 1.00", "6.00", "± 0.80", "0.50", "± 0.20"):
        assert value in text


@pytest.mark.parametrize("setup,args,needle", [
    ("none", ["--xpids", "nope"], "does not exist"),
    ("none", [], "no runs in it"),
    ("run", ["--group_by", "bogus"], "no flag 'bogus'"),
    ("run", ["--smooth", "-5"], "--smooth must be a positive"),
    ("run", ["--evaluation", "missing.json"], "missing.json"),
    ("bad_eval", ["--evaluation", "bad.json"], "not an evaluation.json"),
    ("bad_log", [], "cannot read"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, setup, args, needle):
    runs = tmp_path / "runs"
    runs.mkdir()
    if setup in ("run", "bad_eval"):
        fake_run(runs, "gt1", MAZE9, "gt", linear_rows(1.0))
    if setup == "bad_eval":
        (tmp_path / "bad.json").write_text(json.dumps({"results": [{"agent": "x"}]}))
    if setup == "bad_log":
        run = fake_run(runs, "gt1", MAZE9, "gt", linear_rows(1.0))
        (run / "logs.csv").write_text("step,mean_episode_return\nten,1.0\n")
    args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    assert plot.main(["--savedir", str(runs), *args]) == 2
    stderr = capsys.readouterr().err
    assert needle in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_bad_flag_exits_2_with_one_line(tmp_path):
    proc = run_module("torchbeast.plot", "--savedir", tmp_path, "--band", "nope", check=False, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
