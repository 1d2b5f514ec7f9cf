"""Cost of one actor inference step (T=1) of the memory agent on this machine's CPU.

    python benchmarks/bench_inference.py             # ~1 min; writes benchmarks/results/bench_inference.json
    python benchmarks/bench_inference.py --quick     # a few seconds, noisier

For each encoder and batch size (actors answered at once: 1 in MonoBeast, the dynamic batch in
PolyBeast), with `--posemb noisygt`, an LSTM of 256 and one torch thread, in inference mode:
- `forward us`: one `MemoryAgent` forward at T=1, as actors and inference threads call it;
- `cold us`: the same after sweeping 32 MB of memory before each call, which evicts the model's
  weights from the caches the way an env step between two forwards does;
- `lstm_cell us` and `nn.LSTM us`: the LSTM step alone, through the agent's one-step path
  (`torch.lstm_cell` on the LSTM's weights) and through `nn.LSTM` with T=1 (oneDNN on a CPU),
  hot. Before/after: the forward used `nn.LSTM` until session 3.
Each number is the best of 5 rounds of enough calls to last 0.2 s or more (`--quick`: 3 rounds
of 0.05 s). Prints a table, writes JSON with the machine and torch version.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch
from report import write_result

from torchbeast.models import MemoryAgent

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_inference.json")


def best_us(
    fn: Callable[[], object], rounds: int, min_seconds: float, before: Optional[Callable[[], object]] = None
) -> float:
    """Best time per call in microseconds over `rounds` rounds; `before` runs untimed before each call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        calls, elapsed = 0, 0.0
        while elapsed < min_seconds:
            if before is not None:
                before()
            start = time.perf_counter()
            fn()
            elapsed += time.perf_counter() - start
            calls += 1
        best = min(best, elapsed / calls)
    return best * 1e6


def step_inputs(batch: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return dict(
        frame=torch.randint(0, 256, (1, batch, 3, 64, 64), dtype=torch.uint8, generator=g),
        reward=torch.zeros(1, batch),
        done=torch.zeros(1, batch, dtype=torch.bool),
        last_action=torch.zeros(1, batch, dtype=torch.int64),
        noisy_position=torch.rand(1, batch, 2, generator=g),
        heading=torch.rand(1, batch, 2, generator=g),
    )


def measure(encoder: str, batch: int, rounds: int, min_seconds: float) -> Dict[str, float]:
    torch.manual_seed(0)
    model = MemoryAgent(num_actions=6, posemb="noisygt", encoder=encoder)
    inputs, state = step_inputs(batch), model.initial_state(batch)
    core_input = torch.randn(batch, model.core.input_size)
    sweep = np.ones(32 * 1024 * 1024 // 4, dtype=np.float32)
    with torch.inference_mode():
        return dict(
            encoder=encoder, batch=batch,
            forward_us=best_us(lambda: model(inputs, state), rounds, min_seconds),
            cold_forward_us=best_us(lambda: model(inputs, state), rounds, min_seconds, before=sweep.sum),
            lstm_cell_us=best_us(lambda: model._core_step(core_input, inputs["done"][0], state), rounds, min_seconds),
            nn_lstm_us=best_us(lambda: model.core(core_input.unsqueeze(0), state), rounds, min_seconds),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.05 s: seconds, noisier")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds, min_seconds = (3, 0.05) if args.quick else (5, 0.2)
    rows = [measure(encoder, batch, rounds, min_seconds) for encoder in ("small", "impala") for batch in (1, 2, 16)]
    print(f"{'encoder':<8} {'batch':>5} {'forward us':>11} {'cold us':>9} {'lstm_cell us':>13} {'nn.LSTM us':>11}")
    for r in rows:
        print(f"{r['encoder']:<8} {r['batch']:>5} {r['forward_us']:>11.1f} {r['cold_forward_us']:>9.1f} "
              f"{r['lstm_cell_us']:>13.1f} {r['nn_lstm_us']:>11.1f}")
    write_result(args.out, dict(rows=rows, torch=torch.__version__))


if __name__ == "__main__":
    main()
