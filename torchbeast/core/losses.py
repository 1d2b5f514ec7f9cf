"""IMPALA's three loss terms, summed over time and batch (as in the paper's implementation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def baseline_loss(advantages: torch.Tensor) -> torch.Tensor:
    """Half the squared error of the baseline against the V-trace targets (vs - V)."""
    return 0.5 * torch.sum(advantages**2)


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Negative entropy of the policy: minimising it keeps the policy exploring."""
    policy = F.softmax(logits, dim=-1)
    log_policy = F.log_softmax(logits, dim=-1)
    return torch.sum(policy * log_policy)


def policy_gradient_loss(
    logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """-sum log pi(a_t|x_t) * A_t, with the advantages treated as constants."""
    cross_entropy = F.nll_loss(
        F.log_softmax(torch.flatten(logits, 0, 1), dim=-1),
        target=torch.flatten(actions, 0, 1),
        reduction="none",
    ).view_as(advantages)
    return torch.sum(cross_entropy * advantages.detach())
