"""The learner's state in process: non-finite updates are skipped and, in a row, stop the run
without saving over the last good checkpoint; a resume restores the RNG states."""
import os

import pytest
import torch

from torchbeast.core import flags as flags_lib
from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.learner import learn_step
from torchbeast.core.rollout import step_spec
from torchbeast.core.supervisor import RunFailure, WatchedThread
from torchbeast.core.training import LearnerState, NonFiniteUpdates

CUE = "torchbeast:CueMemory-v0"
T, B = 3, 2


@pytest.fixture
def make_state(tmp_path):
    """LearnerState(extra flags...) of a tiny CueMemory run in tmp_path; closed at the end."""
    states = []

    def make(*extra):
        flags = flags_lib.FlagParser("t", "", flags_lib.MONOBEAST).parse_flags(
            ["--env", CUE, "--encoder", "small", "--hidden_size", "16", "--batch_size", str(B), "--unroll_length",
             str(T), "--num_actors", "1", "--savedir", str(tmp_path), "--xpid", "run", "--seed", "1", *extra])
        states.append(LearnerState(flags, torch.device("cpu")))
        return states[-1]

    yield make
    for state in states:
        state.close()

def batch(reward=1.0):
    rows = {key: torch.zeros((T + 1, B, *shape), dtype=dtype) for key, (shape, dtype) in step_spec(CUE).items()}
    rows["reward"].fill_(reward)
    return rows


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_learn_step_skips_a_non_finite_update(make_state):
    state = make_state()
    before, lr_epoch = weights(state.model), state.scheduler.last_epoch
    stats = learn_step(state.update_config, state.model, batch(float("nan")), state.model.initial_state(B),
                       state.optimizer, state.scheduler)
    assert stats["skipped"]
    assert all(torch.equal(a, b) for a, b in zip(before, weights(state.model)))
    assert state.scheduler.last_epoch == lr_epoch and not state.optimizer.state  # RMSProp never stepped
    stats = learn_step(state.update_config, state.model, batch(), state.model.initial_state(B), state.optimizer,
                       state.scheduler)
    assert not stats["skipped"] and state.scheduler.last_epoch == lr_epoch + 1


def test_non_finite_updates_in_a_row_stop_the_run_keeping_the_checkpoint(tmp_path, make_state, caplog):
    state = make_state("--max_nonfinite_updates", "3")
    initial = state.model.initial_state(B)
    state.learn(batch(), initial)
    assert state.save() is True and state.step == T * B
    saved = load_checkpoint(state.checkpoint_path)
    # A good update between bad ones resets the count.
    for good in (False, False, True, False, False):
        state.learn(batch(1.0 if good else float("nan")), initial)
    assert state.step == 2 * T * B and state.nonfinite_in_a_row == 2
    assert caplog.text.count("skipped: non-finite loss") == 4
    with pytest.raises(NonFiniteUpdates, match=r"3 updates in a row .* checkpoint of step 6 is kept"):
        state.learn(batch(float("nan")), initial)
    assert isinstance(NonFiniteUpdates("x"), RunFailure)  # reported in one line, without a traceback
    assert state.save() is False  # the final save of the run does not replace the last good checkpoint
    assert load_checkpoint(state.checkpoint_path)["step"] == saved["step"] == T * B
    assert not os.path.exists(str(tmp_path / "run" / "model.prev.tar"))


def test_a_learner_thread_stopped_by_non_finite_updates_fails_the_run_in_one_line():
    def learn():
        raise NonFiniteUpdates("10 updates in a row had a non-finite loss or gradient norm (at step 40)")

    thread = WatchedThread("learner-0", learn)
    thread.start()
    thread.join()
    reason = thread.raised()
    assert reason.detail == "learner-0: 10 updates in a row had a non-finite loss or gradient norm (at step 40)"
    assert reason.error is None and not reason.config_error  # exit status 1, no traceback


def test_resume_restores_the_rng_states_and_the_step(make_state):
    state = make_state()
    state.learn(batch(), state.model.initial_state(B))
    state.save()
    expected = torch.rand(4)
    state.close()
    torch.manual_seed(12345)
    resumed = make_state()  # seeds torch with --seed, then the resume restores the saved states
    assert resumed.step == T * B
    assert torch.equal(torch.rand(4), expected)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict"):
        assert key in load_checkpoint(resumed.checkpoint_path)
