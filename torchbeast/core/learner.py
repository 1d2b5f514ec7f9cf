"""One IMPALA update: V-trace targets, the three losses, an optimiser step.

Shared by MonoBeast and PolyBeast. A batch is a dict of `[T + 1, B, ...]` tensors where step 0 of
each rollout repeats the last step of the previous one: the model is run on all T + 1 steps, the
last value bootstraps the targets, and the T transitions 1..T are learned from.
"""
from __future__ import annotations

import argparse
from typing import Dict, Tuple

import torch
from torch import nn

from torchbeast.core import losses, vtrace
from torchbeast.models import AgentState


def rewards_and_discounts(batch: Dict[str, torch.Tensor], flags: argparse.Namespace) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rewards and discounts of the transitions 1..T.

    An episode cut by a time limit is not over: its last transition bootstraps from the value the
    actor computed on the true final observation (`truncation_value`), folded into the reward so
    the V-trace recursion still stops at the episode boundary.
    """
    rewards = batch["reward"][1:]
    if flags.reward_clipping == "abs_one":
        rewards = rewards.clamp(-1, 1)
    done = batch["done"][1:]
    truncated = batch["truncated"][1:]
    rewards = rewards + flags.discounting * truncated.float() * batch["truncation_value"][1:]
    discounts = (~done).float() * flags.discounting
    return rewards, discounts


def learn_step(
    flags: argparse.Namespace,
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    initial_agent_state: AgentState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Dict[str, float]:
    """Updates `model` from one batch; returns the losses and episode statistics."""
    learner_outputs, _ = model(batch, initial_agent_state)
    bootstrap_value = learner_outputs["baseline"][-1]
    learner_outputs = {key: value[:-1] for key, value in learner_outputs.items()}

    rewards, discounts = rewards_and_discounts(batch, flags)
    targets = vtrace.from_logits(
        behavior_policy_logits=batch["policy_logits"][1:],
        target_policy_logits=learner_outputs["policy_logits"],
        actions=batch["action"][1:],
        discounts=discounts,
        rewards=rewards,
        values=learner_outputs["baseline"],
        bootstrap_value=bootstrap_value,
    )
    pg_loss = losses.policy_gradient_loss(learner_outputs["policy_logits"], batch["action"][1:], targets.pg_advantages)
    baseline_loss = flags.baseline_cost * losses.baseline_loss(targets.vs - learner_outputs["baseline"])
    entropy_loss = flags.entropy_cost * losses.entropy_loss(learner_outputs["policy_logits"])
    total_loss = pg_loss + baseline_loss + entropy_loss

    optimizer.zero_grad()
    total_loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), flags.grad_norm_clipping)
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
        "learning_rate": optimizer.param_groups[0]["lr"],
        "episode_returns": episode_returns.cpu().tolist(),
        "episode_steps": episode_steps.cpu().tolist(),
    }


def make_optimizer(flags: argparse.Namespace, model: nn.Module) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """RMSProp; the learning rate rises linearly over --warmup_steps, then decays linearly to zero."""
    optimizer = torch.optim.RMSprop(
        model.parameters(), lr=flags.learning_rate, momentum=flags.momentum, eps=flags.epsilon, alpha=flags.alpha
    )
    steps_per_update = flags.unroll_length * flags.batch_size

    def lr_lambda(update: int) -> float:
        steps = update * steps_per_update
        decay = max(0.0, 1.0 - min(steps, flags.total_steps) / flags.total_steps)
        if steps < flags.warmup_steps:
            return decay * (steps + steps_per_update) / (flags.warmup_steps + steps_per_update)
        return decay

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return optimizer, scheduler
