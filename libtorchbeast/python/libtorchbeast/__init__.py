"""libtorchbeast: the torch-free C++ core of PolyBeast.

Everything moves nests of arrays: dicts with str keys, lists and tuples of nests (handed back
as tuples), and arrays (anything ``np.asarray`` takes; pass torch tensors as
``tensor.numpy()``). Arrays handed out are NumPy arrays sharing the C++ buffers (no copy);
arrays passed in are copied (made contiguous on the way). Blocking calls release the GIL.

- ``BatchingQueue``: rollouts from actors to the learner, batched along a dimension.
- ``DynamicBatcher``: inference requests from many actors, answered in batches.
- ``Server``: a gRPC server running one Gymnasium-style env per actor stream.
- ``ActorPool``: actor threads connecting env servers, the batcher and the learner queue.
- ``Client``: one env server stream, for tests and benchmarks.
- ``Registry``, ``Registrar``: env servers registering with the learner (the learner's and the
  server's end), so that it finds them without being told their addresses.
- ``TlsConfig``: mutual TLS for any of them over TCP (PEM texts); unix sockets stay plaintext.
- ``STEP_INPUT_KEYS``, ``ROLLOUT_STEP_KEYS``: the keys of the actor pool's model inputs and of
  the step part of its rollout entries.
"""

import functools
import traceback
from typing import Any, Callable, Optional, Tuple

from libtorchbeast import _C
from libtorchbeast._C import (
    ROLLOUT_STEP_KEYS,
    STEP_INPUT_KEYS,
    ActorPool,
    Batch,
    BatchDroppedError,
    BatchingQueue,
    Client,
    ClosedError,
    DynamicBatcher,
    EnvError,
    PeerError,
    Registrar,
    Registry,
    RpcError,
    TlsConfig,
)
from torchbeast.core.episodes import EpisodeStream

__all__ = [
    "ActorPool",
    "Batch",
    "BatchDroppedError",
    "BatchingQueue",
    "Client",
    "ClosedError",
    "DynamicBatcher",
    "EnvError",
    "PeerError",
    "ROLLOUT_STEP_KEYS",
    "Registrar",
    "Registry",
    "RpcError",
    "STEP_INPUT_KEYS",
    "Server",
    "TlsConfig",
]


class Server:
    """A gRPC server that runs one Gymnasium-style env per actor stream.

    ``env_factory()`` is called once per stream (with the GIL held, like the env's methods) and
    must return an env with ``reset() -> (observation, info)`` and
    ``step(action) -> (observation, reward, terminated, truncated, info)``; ``close()`` is called
    when the stream ends, if the env has one. Observations are nests of arrays (dicts, lists,
    tuples, NumPy arrays). The action arrives as a nest of NumPy arrays (a discrete action is a
    0-d int64 array).

    Each env is wrapped in ``torchbeast.core.episodes.EpisodeStream``, which does the episode
    bookkeeping: it resets the env at episode end, and the step that follows carries the new
    episode's first observation with ``done=True``, ``truncated`` telling whether the episode
    ended by a time limit (truncated and not terminated), the ended episode's ``episode_step``
    and ``episode_return`` and, when truncated, ``final_observation``: the observation
    ``step()`` returned with ``truncated=True``, before the reset. The C++ server
    (``libtorchbeast._C.Server``) sends these records as they are.

    Errors raised by the env or the factory end that stream with a gRPC status carrying the
    error message (the actor pool raises it as ``EnvError``); other streams go on.
    ``address``: ``"unix:/path/to/socket"`` or ``"host:port"`` (port 0 picks a free port: see
    ``port``). ``max_streams``: streams served at a time (0: no limit); a further one ends at
    once with RESOURCE_EXHAUSTED, before any env is made. A TCP port already served cannot be
    bound. ``tls``: a ``TlsConfig`` (mutual TLS over TCP: clients without a certificate signed by
    its CA are refused) or None (plaintext). ``run()`` blocks until ``stop()``; ``start()``
    returns once the server listens; all release the GIL.
    """

    def __init__(self, env_factory: Callable[[], Any], address: str, max_streams: int = 0,
                 tls: Optional[TlsConfig] = None) -> None:
        self._server = _C.Server(functools.partial(_episode_stream, env_factory), address, max_streams=max_streams,
                                 tls=tls)

    def run(self) -> None:
        """Serves until stop() (from another thread). Raises RuntimeError if the address cannot be bound."""
        self._server.run()

    def start(self) -> None:
        """Starts serving in the background and returns."""
        self._server.start()

    def wait(self) -> None:
        """Blocks until stop()."""
        self._server.wait()

    def stop(self) -> None:
        """Cancels open streams, waits for their handlers and makes run() return. Idempotent."""
        self._server.stop()

    @property
    def address(self) -> str:
        return self._server.address

    @property
    def port(self) -> int:
        """The bound TCP port (0 for unix sockets or before start)."""
        return self._server.port


def _raised(call: str, error: Exception) -> EnvError:
    """An EnvError saying that `call` raised `error`, with the traceback below the caller."""
    what = "".join(traceback.format_exception_only(type(error), error)).strip()
    frames = traceback.format_tb(error.__traceback__.tb_next) if error.__traceback__ else []
    return EnvError("\n".join([f"{call} raised {what}", *(frame.rstrip("\n") for frame in frames)]))


def _episode_stream(env_factory: Callable[[], Any]) -> EpisodeStream:
    try:
        env = env_factory()
    except Exception as e:
        raise _raised("env_factory()", e) from e
    return EpisodeStream(_CheckedEnv(env))


class _CheckedEnv:
    """Passes calls to a Gymnasium-style env; its errors and malformed returns become an
    EnvError naming the call, which the server sends to the client as it is."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def reset(self) -> Tuple[Any, Any]:
        return self._call("reset", (), 2, "(observation, info)")

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, Any]:
        return self._call("step", (action,), 5, "(observation, reward, terminated, truncated, info)")

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()

    def _call(self, name: str, args: Tuple[Any, ...], length: int, returns: str) -> Any:
        try:
            result = getattr(self.env, name)(*args)
        except Exception as e:
            raise _raised(f"env.{name}()", e) from e
        if not isinstance(result, tuple) or len(result) != length:
            raise EnvError(f"env.{name}() must return {returns}, got {repr(result)[:200]}")
        return result
