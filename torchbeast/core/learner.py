"""One IMPALA update: V-trace targets, the three losses, an optimiser step.

Shared by MonoBeast and PolyBeast. A batch is a dict of `[T + 1, B, ...]` tensors laid out as
`torchbeast.core.rollout` says: the model is run on all T + 1 rows, the T transitions from row t
(its action and behaviour logits) to row t + 1 (its reward and done) are learned from, and the
last row's value bootstraps the targets.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from torchbeast.core import losses, vtrace
from torchbeast.models import AgentState


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """The flags an update and its optimiser read."""

    discounting: float
    reward_clipping: str
    baseline_cost: float
    entropy_cost: float
    grad_norm_clipping: float
    learning_rate: float
    alpha: float
    momentum: float
    epsilon: float
    warmup_steps: int
    total_steps: int
    steps_per_update: int  # unroll_length * batch_size

    @classmethod
    def flag_names(cls) -> Tuple[str, ...]:
        """The flags it is made of (steps_per_update comes from --unroll_length and --batch_size)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "steps_per_update")

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> "UpdateConfig":
        return cls(steps_per_update=flags.unroll_length * flags.batch_size,
                   **{name: getattr(flags, name) for name in cls.flag_names()})


def rewards_and_discounts(batch: Dict[str, torch.Tensor], config: UpdateConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rewards and discounts of the transitions 1..T.

    An episode cut by a time limit is not over: its last transition bootstraps from the value the
    actor computed on the true final observation (`truncation_value`), folded into the reward so
    the V-trace recursion still stops at the episode boundary.
    """
    rewards = batch["reward"][1:]
    if config.reward_clipping == "abs_one":
        rewards = rewards.clamp(-1, 1)
    done = batch["done"][1:]
    truncated = batch["truncated"][1:]
    rewards = rewards + config.discounting * truncated.float() * batch["truncation_value"][1:]
    discounts = (~done).float() * config.discounting
    return rewards, discounts


# Called with the model and the loss after the backward pass, before clipping: data-parallel
# learners average their gradients there (`torchbeast.core.distributed`).
GradientHook = Callable[[nn.Module, torch.Tensor], None]


def learn_step(
    config: UpdateConfig,
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    initial_agent_state: AgentState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    gradient_hook: Optional[GradientHook] = None,
) -> Dict[str, float]:
    """Updates `model` from one batch; returns the losses and episode statistics, and `skipped`:
    True when the loss or gradient norm was not finite and the update was not applied."""
    # Logits and values only: sampling actions would raise on a diverged model's non-finite logits.
    learner_outputs, _ = model(batch, initial_agent_state, sample_actions=False)
    bootstrap_value = learner_outputs["baseline"][-1]
    learner_outputs = {key: value[:-1] for key, value in learner_outputs.items()}

    rewards, discounts = rewards_and_discounts(batch, config)
    targets = vtrace.from_logits(
        behavior_policy_logits=batch["policy_logits"][:-1],
        target_policy_logits=learner_outputs["policy_logits"],
        actions=batch["action"][:-1],
        discounts=discounts,
        rewards=rewards,
        values=learner_outputs["baseline"],
        bootstrap_value=bootstrap_value,
    )
    pg_loss = losses.policy_gradient_loss(learner_outputs["policy_logits"], batch["action"][:-1], targets.pg_advantages)
    baseline_loss = config.baseline_cost * losses.baseline_loss(targets.vs - learner_outputs["baseline"])
    entropy_loss = config.entropy_cost * losses.entropy_loss(learner_outputs["policy_logits"])
    total_loss = pg_loss + baseline_loss + entropy_loss

    optimizer.zero_grad()
    total_loss.backward()
    if gradient_hook is not None:
        gradient_hook(model, total_loss)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_clipping)
    # A non-finite loss or gradient norm would poison the weights and RMSProp's averages for good:
    # such an update is skipped (weights, optimiser and schedule untouched) and said so ("skipped").
    skipped = not bool(torch.isfinite(total_loss) & torch.isfinite(grad_norm))
    if not skipped:
        optimizer.step()
        scheduler.step()

    done = batch["done"][1:]
    episode_returns = batch["episode_return"][1:][done]
    episode_steps = batch["episode_step"][1:][done]
    return {
        "total_loss": total_loss.item(),
        "pg_loss": pg_loss.item(),
        "baseline_loss": baseline_loss.item(),
        "entropy_loss": entropy_loss.item(),
        "grad_norm": grad_norm.item(),
        "skipped": skipped,
        "learning_rate": optimizer.param_groups[0]["lr"],
        "episode_returns": episode_returns.cpu().tolist(),
        "episode_steps": episode_steps.cpu().tolist(),
    }


def make_optimizer(
    config: UpdateConfig, model: nn.Module
) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """RMSProp; the learning rate rises linearly over --warmup_steps, then decays linearly to zero."""
    optimizer = torch.optim.RMSprop(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, eps=config.epsilon, alpha=config.alpha
    )
    steps_per_update = config.steps_per_update

    def lr_lambda(update: int) -> float:
        steps = update * steps_per_update
        decay = max(0.0, 1.0 - min(steps, config.total_steps) / config.total_steps)
        if steps < config.warmup_steps:
            return decay * (steps + steps_per_update) / (config.warmup_steps + steps_per_update)
        return decay

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return optimizer, scheduler
