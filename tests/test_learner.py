"""Targets of one update: clipping, terminal vs truncated steps."""
import torch

from torchbeast.core.learner import UpdateConfig, learn_step, make_optimizer, rewards_and_discounts
from torchbeast.envs.memory_maze import NUM_ACTIONS
from torchbeast.models import MemoryAgent


def flags(**overrides):
    values = dict(discounting=0.9, reward_clipping="abs_one", baseline_cost=0.5, entropy_cost=0.01,
                  grad_norm_clipping=40.0, learning_rate=1e-3, momentum=0.0, epsilon=0.01, alpha=0.99,
                  steps_per_update=3, total_steps=300, warmup_steps=0)
    values.update(overrides)
    return UpdateConfig(**values)


def test_terminal_cuts_and_truncation_bootstraps():
    # Steps 0..3 of one rollout: step 2 ends an episode at the time limit, step 3 another one for real.
    batch = dict(
        reward=torch.tensor([[0.0], [5.0], [0.5], [-0.25]]),
        done=torch.tensor([[True], [False], [True], [True]]),
        truncated=torch.tensor([[False], [False], [True], [False]]),
        truncation_value=torch.tensor([[0.0], [0.0], [2.0], [0.0]]),
    )
    rewards, discounts = rewards_and_discounts(batch, flags())
    torch.testing.assert_close(discounts, torch.tensor([[0.9], [0.0], [0.0]]))
    # Clipped to 1; the truncated step gets gamma * V(final observation); the terminal one nothing.
    torch.testing.assert_close(rewards, torch.tensor([[1.0], [0.5 + 0.9 * 2.0], [-0.25]]))
    unclipped, _ = rewards_and_discounts(batch, flags(reward_clipping="none"))
    assert unclipped[0].item() == 5.0


def test_learn_step_moves_the_baseline_towards_the_return():
    torch.manual_seed(0)
    T, B = 3, 2
    model = MemoryAgent(num_actions=NUM_ACTIONS, encoder="small", hidden_size=16)
    f = flags(steps_per_update=T * B, learning_rate=5e-3, entropy_cost=0.0)
    optimizer, scheduler = make_optimizer(f, model)
    batch = dict(
        frame=torch.zeros(T + 1, B, 3, 64, 64, dtype=torch.uint8),
        reward=torch.ones(T + 1, B),
        done=torch.zeros(T + 1, B, dtype=torch.bool),
        truncated=torch.zeros(T + 1, B, dtype=torch.bool),
        truncation_value=torch.zeros(T + 1, B),
        episode_return=torch.zeros(T + 1, B),
        episode_step=torch.zeros(T + 1, B, dtype=torch.int32),
        last_action=torch.zeros(T + 1, B, dtype=torch.int64),
        action=torch.zeros(T + 1, B, dtype=torch.int64),
    )
    with torch.no_grad():
        outputs, _ = model(batch, model.initial_state(B))
    batch["policy_logits"] = outputs["policy_logits"]
    before = outputs["baseline"][0].mean().item()
    for _ in range(20):
        stats = learn_step(f, model, batch, model.initial_state(B), optimizer, scheduler)
    with torch.no_grad():
        after = model(batch, model.initial_state(B))[0]["baseline"][0].mean().item()
    assert after > before + 0.5, (before, after)
    assert stats["learning_rate"] < f.learning_rate  # decays linearly with the steps learned
    assert stats["episode_returns"] == []


def test_warmup_raises_the_learning_rate_linearly_then_it_decays():
    model = MemoryAgent(num_actions=NUM_ACTIONS, encoder="small", hidden_size=16)
    f = flags(learning_rate=1.0, steps_per_update=10, total_steps=1000, warmup_steps=40)
    optimizer, scheduler = make_optimizer(f, model)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Updates at steps 0, 10, 20, 30 ramp up to the decayed rate; from step 40 on it decays linearly.
    expected = [1 / 5, 0.99 * 2 / 5, 0.98 * 3 / 5, 0.97 * 4 / 5, 0.96, 0.95, 0.94, 0.93]
    torch.testing.assert_close(torch.tensor(rates), torch.tensor(expected))
