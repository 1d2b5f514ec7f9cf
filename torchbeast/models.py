"""The memory agent: ResNet encoder for the 64x64 frame, position embedding, LSTM core, heads.

Inputs are time-major dicts of tensors `[T, B, ...]`: `frame` uint8 `[T, B, 3, 64, 64]`, `reward`
`[T, B]`, `done` bool `[T, B]` (True where this step starts a new episode), `last_action` int64
`[T, B]`, and for position embeddings `position`/`noisy_position`/`heading` float `[T, B, 2]`.
The LSTM state is reset with a `(1 - done)` mask before each step that starts an episode, so it
can be carried across unrolls and used in test mode alike.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# --posemb choices and what each feeds the agent; the help text of the flag is built from this.
POSEMBS: Dict[str, str] = {
    "none": "no position input: the agent sees only frames, rewards and its last action",
    "gt": "exact position and heading (ExtraObs envs), through a small MLP",
    "noisygt": "position with Gaussian noise of std --pos_noise cells, and heading, through an MLP",
    "fourier": "sinusoidal features of the exact position at several frequencies, and heading",
    "noisyfourier": "sinusoidal features of the noisy position, and heading",
}

# --encoder choices.
ENCODERS: Dict[str, str] = {
    "impala": "IMPALA's 15-layer ResNet (16-32-32 channels), the reference architecture",
    "small": "3-layer strided conv net (Nature DQN-like), several times cheaper on a CPU",
}

AgentState = Tuple[torch.Tensor, ...]


def posemb_needs_positions(posemb: str) -> bool:
    return posemb != "none"


def _position_key(posemb: str) -> str:
    return "noisy_position" if posemb.startswith("noisy") else "position"


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv0(F.relu(x))
        out = self.conv1(F.relu(out))
        return x + out


class ImpalaEncoder(nn.Module):
    """IMPALA's deep ResNet: per stage a conv, a stride-2 max-pool and two residual blocks."""

    def __init__(self, channels: Tuple[int, ...] = (16, 32, 32), out_features: int = 256) -> None:
        super().__init__()
        stages = []
        in_channels = 3
        for c in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, c, kernel_size=3, padding=1),
                    nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
                    ResidualBlock(c),
                    ResidualBlock(c),
                )
            )
            in_channels = c
        self.stages = nn.Sequential(*stages)
        side = 64 // (2 ** len(channels))
        self.fc = nn.Linear(in_channels * side * side, out_features)
        self.out_features = out_features

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 255.0
        x = self.stages(x)
        x = F.relu(torch.flatten(x, 1))
        return F.relu(self.fc(x))


class SmallEncoder(nn.Module):
    """A strided 3-layer conv net: far fewer FLOPs than the ResNet, for CPU runs and tests."""

    def __init__(self, out_features: int = 256) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=8, stride=4), nn.ReLU(),  # 64 -> 15
            nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(),  # 15 -> 6
            nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(),  # 6 -> 4
        )
        self.fc = nn.Linear(64 * 4 * 4, out_features)
        self.out_features = out_features

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.convs(frames.float() / 255.0)
        return F.relu(self.fc(torch.flatten(x, 1)))


class PositionEmbedding(nn.Module):
    """Embeds position (normalised to [0, 1]) and heading (a unit vector) for --posemb."""

    def __init__(self, posemb: str, out_features: int = 64, num_frequencies: int = 8) -> None:
        super().__init__()
        self.posemb = posemb
        self.key = _position_key(posemb)
        self.fourier = posemb.endswith("fourier")
        self.num_frequencies = num_frequencies
        in_features = (4 * num_frequencies if self.fourier else 2) + 2
        self.mlp = nn.Sequential(
            nn.Linear(in_features, out_features),
            nn.ReLU(),
            nn.Linear(out_features, out_features),
            nn.ReLU(),
        )
        self.out_features = out_features

    def features(self, position: torch.Tensor) -> torch.Tensor:
        if not self.fourier:
            return position
        # Frequencies 2^k * pi over the unit square: cell-level detail at the highest ones.
        scales = (2.0 ** torch.arange(self.num_frequencies, device=position.device)) * math.pi
        angles = position.unsqueeze(-1) * scales  # [N, 2, K]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        position = torch.flatten(inputs[self.key], 0, 1).float()
        heading = torch.flatten(inputs["heading"], 0, 1).float()
        return self.mlp(torch.cat([self.features(position), heading], dim=-1))


class MemoryAgent(nn.Module):
    """Conv encoder + optional position embedding + LSTM core + policy and baseline heads."""

    def __init__(
        self,
        num_actions: int,
        posemb: str = "none",
        encoder: str = "impala",
        use_lstm: bool = True,
        hidden_size: int = 256,
        num_lstm_layers: int = 1,
    ) -> None:
        super().__init__()
        if posemb not in POSEMBS:
            raise ValueError(f"posemb must be one of {sorted(POSEMBS)}, got {posemb!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
        self.num_actions = num_actions
        self.use_lstm = use_lstm
        self.encoder = (ImpalaEncoder if encoder == "impala" else SmallEncoder)(out_features=hidden_size)
        self.posemb = PositionEmbedding(posemb) if posemb_needs_positions(posemb) else None
        core_input = hidden_size + num_actions + 1
        if self.posemb is not None:
            core_input += self.posemb.out_features
        if use_lstm:
            self.core = nn.LSTM(core_input, hidden_size, num_layers=num_lstm_layers)
            core_output = hidden_size
        else:
            self.core = None
            core_output = core_input
        self.policy = nn.Linear(core_output, num_actions)
        self.baseline = nn.Linear(core_output, 1)

    def initial_state(self, batch_size: int = 1) -> AgentState:
        if self.core is None:
            return tuple()
        shape = (self.core.num_layers, batch_size, self.core.hidden_size)
        return (torch.zeros(shape), torch.zeros(shape))

    def _core_step(self, core_input: torch.Tensor, done: torch.Tensor,
                   core_state: AgentState) -> Tuple[torch.Tensor, AgentState]:
        """One LSTM step for `[B, F]` inputs: the actors' per-step path.

        Same result as `self.core` with T=1 (same weights, same gate order), but ~3.5x cheaper
        on a CPU at batch 1 (benchmarks/bench_inference.py): nn.LSTM's oneDNN kernel pays a
        set-up cost on every call that a one-step call never earns back.
        """
        notdone = (~done).float().view(-1, 1)
        h_all, c_all = core_state
        x = core_input
        hs, cs = [], []
        for layer in range(self.core.num_layers):
            # all_weights[layer] is [weight_ih, weight_hh, bias_ih, bias_hh], lstm_cell's order.
            h, c = torch.lstm_cell(x, (h_all[layer] * notdone, c_all[layer] * notdone), *self.core.all_weights[layer])
            hs.append(h)
            cs.append(c)
            x = h
        return x, (torch.stack(hs), torch.stack(cs))

    def forward(
        self,
        inputs: Dict[str, torch.Tensor],
        core_state: AgentState = (),
        sample_actions: bool = True,
    ) -> Tuple[Dict[str, torch.Tensor], AgentState]:
        T, B = inputs["frame"].shape[:2]
        frames = torch.flatten(inputs["frame"], 0, 1)
        if frames.shape[-1] != 64:  # HD and Top ids render 256x256: average down to the encoder's 64x64
            frames = F.adaptive_avg_pool2d(frames.float(), 64)
        features = [self.encoder(frames)]
        if self.posemb is not None:
            features.append(self.posemb(inputs))
        last_action = F.one_hot(torch.flatten(inputs["last_action"], 0, 1), self.num_actions)
        features.append(last_action.float())
        reward = torch.flatten(inputs["reward"], 0, 1).float().clamp(-1, 1).unsqueeze(-1)
        features.append(reward)
        core_input = torch.cat(features, dim=-1)

        if self.core is not None and T == 1:
            core_output, core_state = self._core_step(core_input, inputs["done"].view(B), core_state)
        elif self.core is not None:
            core_input = core_input.view(T, B, -1)
            done = inputs["done"]
            notdone = (~done).float()
            # Run the LSTM over whole segments between the steps where some episode starts;
            # before each such step, zero the state of the episodes that start there.
            starts = torch.nonzero(done.any(dim=1)).flatten().tolist()
            bounds = sorted(set([0] + starts + [T]))
            outputs = []
            for begin, end in zip(bounds[:-1], bounds[1:]):
                mask = notdone[begin].view(1, -1, 1)
                core_state = tuple(mask * s for s in core_state)
                output, core_state = self.core(core_input[begin:end], core_state)
                outputs.append(output)
            core_output = torch.flatten(torch.cat(outputs), 0, 1)
        else:
            core_output = core_input

        policy_logits = self.policy(core_output)
        baseline = self.baseline(core_output)
        if sample_actions:
            action = torch.multinomial(F.softmax(policy_logits, dim=1), num_samples=1)
        else:
            action = torch.argmax(policy_logits, dim=1)
        return (
            dict(
                policy_logits=policy_logits.view(T, B, self.num_actions),
                baseline=baseline.view(T, B),
                action=action.view(T, B),
            ),
            core_state,
        )
