"""The rollout contract: both actor paths give the learner identical batches."""
import queue
import threading

import numpy as np
import pytest
import torch

import libtorchbeast
from torchbeast.core import rollout
from torchbeast.core.environment import Environment
from torchbeast.core.episodes import RECORD_KEYS, EpisodeStream
from torchbeast.envs.cue_memory import ENV_ID as CUE_MEMORY_ID
from torchbeast.envs.memory_maze import NUM_ACTIONS
from torchbeast.models import MemoryAgent
from torchbeast.monobeast import create_buffers, fill_rollouts
from torchbeast.polybeast_learner import inference_loop, learner_batch

UNROLL = 5
ROLLOUTS = 6


class ScriptedEnv:
    """CueMemory's observation keys; episodes alternate: terminated after 3 steps, cut by a time
    limit after 4. Frames and positions encode the global step and the resets, rewards the action."""

    def __init__(self):
        self.t = 0  # global step
        self.episode = 0
        self.episode_t = 0
        self.resets = 0

    def _obs(self):
        frame = np.full((3, 64, 64), (37 * self.t + 101 * self.resets) % 256, dtype=np.uint8)
        position = np.array([self.t, self.episode], dtype=np.float32)
        return dict(frame=frame, position=position, heading=np.array([1.0, 0.0], dtype=np.float32),
                    noisy_position=position + 0.5)

    def reset(self, seed=None):
        self.episode_t = 0
        self.resets += 1
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.episode_t += 1
        reward = float(action) - 2.5
        length = 3 if self.episode % 2 == 0 else 4
        ended = self.episode_t == length
        terminated, truncated = ended and length == 3, ended and length == 4
        if ended:
            self.episode += 1
        return self._obs(), reward, terminated, truncated, {}

    def close(self):
        pass


def make_model():
    torch.manual_seed(123)
    model = MemoryAgent(num_actions=NUM_ACTIONS, posemb="gt", encoder="small", hidden_size=16)
    model.eval()
    return model


def monobeast_batches(model):
    buffers = create_buffers(CUE_MEMORY_ID, UNROLL, ROLLOUTS)
    states = [[torch.zeros_like(s) for s in model.initial_state(1)] for _ in range(ROLLOUTS)]
    free, full = queue.Queue(), queue.Queue()
    for index in list(range(ROLLOUTS)) + [None]:
        free.put(index)
    torch.manual_seed(7)
    fill_rollouts(Environment(ScriptedEnv()), model, UNROLL, free, full, buffers, states)
    batches = []
    while not full.empty():
        index = full.get()
        batch = {key: buffers[key][index].unsqueeze(1) for key in buffers}
        batches.append((batch, tuple(states[index])))
    return batches


def polybeast_batches(model, tmp_path):
    server = libtorchbeast.Server(ScriptedEnv, f"unix:{tmp_path}/env")
    server.start()
    learner_queue = libtorchbeast.BatchingQueue(batch_dim=1, minimum_batch_size=1, maximum_batch_size=1,
                                                maximum_queue_size=1)
    batcher = libtorchbeast.DynamicBatcher(batch_dim=1, minimum_batch_size=1, maximum_batch_size=1,
                                           timeout_ms=100)
    pool = libtorchbeast.ActorPool(
        unroll_length=UNROLL, learner_queue=learner_queue, inference_batcher=batcher,
        env_server_addresses=[server.address],
        initial_agent_state=tuple(s.numpy() for s in model.initial_state(1)))
    torch.manual_seed(7)
    threads = [threading.Thread(target=pool.run, daemon=True),
               threading.Thread(target=inference_loop, args=(batcher, model, torch.device("cpu")), daemon=True)]
    for thread in threads:
        thread.start()
    batches = []
    try:
        for item in learner_queue:
            batches.append(learner_batch(item, torch.device("cpu")))
            if len(batches) == ROLLOUTS:
                break
    finally:
        learner_queue.close()
        batcher.close()
        pool.stop()
        for thread in threads:
            thread.join(timeout=10)
        server.stop()
    return batches


def test_both_actor_paths_give_the_learner_identical_batches(tmp_path):
    model = make_model()
    mono = monobeast_batches(model)
    poly = polybeast_batches(model, tmp_path)
    assert len(mono) == len(poly) == ROLLOUTS
    spec = rollout.step_spec(CUE_MEMORY_ID)
    truncated_rows = 0
    for (mono_batch, mono_state), (poly_batch, poly_state) in zip(mono, poly):
        assert sorted(mono_batch) == sorted(poly_batch) == sorted(spec)
        for key, (shape, dtype) in spec.items():
            assert poly_batch[key].shape == (UNROLL + 1, 1, *shape), key
            assert poly_batch[key].dtype == dtype, key
            torch.testing.assert_close(poly_batch[key], mono_batch[key], rtol=0, atol=0, msg=key)
        for a, b in zip(poly_state, mono_state):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        truncated_rows += int(mono_batch["truncated"][1:].sum())
        # The truncation value is set exactly on truncated rows.
        assert ((mono_batch["truncation_value"] != 0) == mono_batch["truncated"]).all()
    assert truncated_rows >= 2  # the script cut episodes inside the compared rollouts


def test_rows_follow_the_contract():
    model = make_model()
    batches = monobeast_batches(model)
    previous = None
    for batch, _ in batches:
        # Row 0 repeats the previous rollout's last row.
        if previous is not None:
            for key in batch:
                torch.testing.assert_close(batch[key][0], previous[key][-1], rtol=0, atol=0)
        # last_action of row t + 1 is the action taken at row t.
        torch.testing.assert_close(batch["last_action"][1:], batch["action"][:-1], rtol=0, atol=0)
        # The reward of row t + 1 is what the script pays for row t's action.
        torch.testing.assert_close(batch["reward"][1:], batch["action"][:-1].float() - 2.5)
        previous = batch
    first = batches[0][0]
    assert first["done"][0].item() and first["last_action"][0].item() == 0


def test_truncation_value_is_the_value_of_the_final_observation():
    model = make_model()
    stream = Environment(ScriptedEnv())
    step = stream.initial()
    state = model.initial_state(1)
    while True:
        with torch.no_grad():
            outputs, next_state = rollout.agent_step(model, step, state)
        if step["truncated"].item():
            break
        step, state = stream.step(int(outputs["action"].item())), next_state
    final = dict(step["final_observation"], reward=step["reward"], last_action=step["last_action"],
                 done=torch.zeros(1, 1, dtype=torch.bool))
    with torch.no_grad():
        expected = model(final, state, sample_actions=False)[0]["baseline"]
    torch.testing.assert_close(outputs["truncation_value"], expected)
    assert not torch.equal(final["frame"], step["frame"])  # the final observation, not the new episode's


@pytest.mark.parametrize("key_set", ["ROLLOUT_STEP_KEYS", "STEP_INPUT_KEYS"])
def test_cpp_keys_match_the_python_contract(key_set):
    rollout_keys = ("observation",) + rollout.RECORD_KEYS + rollout.ACTOR_KEYS
    expected = {
        "ROLLOUT_STEP_KEYS": rollout_keys,
        "STEP_INPUT_KEYS": rollout_keys + (rollout.FINAL_OBSERVATION, "agent_state"),
    }[key_set]
    assert set(getattr(libtorchbeast, key_set)) == set(expected)


def test_episode_stream_records_have_the_wire_keys():
    stream = EpisodeStream(ScriptedEnv())
    records = [stream.initial()] + [stream.step(0) for _ in range(7)]
    assert all(tuple(r) == RECORD_KEYS for r in records)
    # Terminated after 3 steps (no final observation), then truncated after 4 (with one).
    assert [r["done"] for r in records] == [True, False, False, True, False, False, False, True]
    assert records[3]["truncated"] is False and records[3]["final_observation"] is None
    assert records[7]["truncated"] is True and records[7]["final_observation"] is not None
    assert records[3]["episode_step"] == 3 and records[7]["episode_step"] == 4
    assert records[7]["episode_return"] == pytest.approx(4 * -2.5)

