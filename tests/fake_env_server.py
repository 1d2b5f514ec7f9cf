"""A misbehaving env server for the fault tests: CueMemory behind libtorchbeast.Server, going
bad after a few steps of every stream.

    python tests/fake_env_server.py ADDRESS KIND

KIND: "shape" (the frame becomes [3, 64, 65]), "nan" (a NaN reward) or "silent" (stops
answering). Serves until SIGTERM.
"""
import os
import signal
import sys
import threading
import time

import numpy as np

from libtorchbeast import Server
from torchbeast.core.environment import create_env

BAD_FROM_STEP = 20


class BadEnv:
    def __init__(self, kind: str) -> None:
        self.env, self.kind, self.t = create_env("torchbeast:CueMemory-v0", seed=0), kind, 0

    def reset(self, seed=None):
        return self.env.reset()

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t >= BAD_FROM_STEP:
            if self.kind == "shape":
                obs = dict(obs, frame=np.zeros((3, 64, 65), np.uint8))
            elif self.kind == "nan":
                reward = float("nan")
            elif self.kind == "silent":
                time.sleep(3600)
        return obs, reward, terminated, truncated, info


def main() -> None:
    address, kind = sys.argv[1], sys.argv[2]
    server = Server(lambda: BadEnv(kind), address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print("serving", flush=True)
    stop.wait()
    os._exit(0)  # at once: stop() would wait for a "silent" stream's handler, which sleeps on


if __name__ == "__main__":
    main()
