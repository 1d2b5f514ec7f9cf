"""What the progress lines and the learning curve show: a steady step rate between sparse
updates, and redraws at a fixed interval, at checkpoints, and only with new data."""
import re

import pytest

from torchbeast.core.training import Reporter, StepRate


def memory_maze_like_run(rate, until, update_every=25.6, steps_per_update=3200, tick=0.2):
    """Observes a run that adds 3200 steps every 25.6 s (125 SPS) on every 0.2 s tick; yields (t, SPS)."""
    step, next_update, t = 0, update_every, 0.0
    while t < until:
        t = round(t + tick, 6)
        if t >= next_update:
            step += steps_per_update
            next_update += update_every
        rate.observe(t, step)
        yield t, rate.per_second(t)


def test_step_rate_is_steady_between_sparse_updates():
    rate = StepRate(window_s=60.0, now=0.0, step=0)
    shown = [sps for t, sps in memory_maze_like_run(rate, until=600.0) if t >= 60.0]
    assert min(shown) == pytest.approx(125.0, rel=0.01) and max(shown) == pytest.approx(125.0, rel=0.01)


def test_step_rate_since_the_start_then_over_the_window():
    rate = StepRate(window_s=60.0, now=0.0, step=0)
    assert rate.per_second(5.0) == 0.0  # no update yet
    rate.observe(10.0, 400)  # the first update lands after the actors' start-up
    assert rate.per_second(10.0) == pytest.approx(40.0)
    for i in range(1, 40):
        rate.observe(10.0 + 5 * i, 400 + 1000 * i)  # then 200 SPS
    assert rate.per_second(205.0) == pytest.approx(200.0)


def test_step_rate_falls_when_updates_stop():
    rate = StepRate(window_s=60.0, now=0.0, step=0)
    for i in range(1, 30):
        rate.observe(5.0 * i, 1000 * i)
    assert rate.per_second(146.0) == pytest.approx(200.0)  # the next update is not overdue yet
    assert rate.per_second(145.0 + 60.0) < 0.6 * 200.0
    assert rate.per_second(145.0 + 600.0) < 0.1 * 200.0


class FakeState:
    def __init__(self):
        self.step = 0
        self.recent_returns = []
        self.last_stats = {}
        self.curve = []
        self.calls = []

    def save(self):
        self.calls.append(("save", len(self.curve)))

    def draw_learning_curve(self):
        self.calls.append(("curve", len(self.curve)))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_reporter_redraws_the_curve_every_minute_with_new_data_and_at_checkpoints(capsys):
    state, clock = FakeState(), Clock()
    reporter = Reporter(state, log_interval=5.0, checkpoint_interval=600.0, clock=clock)
    for second in range(1, 1201):
        clock.now = float(second)
        if second % 20 == 0 and second < 300:  # updates, each with an ended episode, for 5 minutes
            state.step += 2000
            state.curve.append((state.step, 1.0))
        reporter.tick()
    # Minutes 1-5 had new points (the last update is at 280 s), minutes 6-9 and 11-19 none; the
    # checkpoints at 600 s and 1200 s draw it too.
    assert state.calls == [("curve", 3), ("curve", 6), ("curve", 9), ("curve", 12), ("curve", 14),
                           ("save", 14), ("save", 14)]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1200 // 5
    sps = [float(re.search(r"\|\s+([\d.]+) SPS", line).group(1)) for line in lines[12:55]]
    assert all(sps_value == pytest.approx(100.0, rel=0.02) for sps_value in sps), sps  # 2000 steps / 20 s
