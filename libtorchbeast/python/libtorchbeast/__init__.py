"""libtorchbeast: the torch-free C++ core of PolyBeast.

Everything moves nests of arrays: dicts with str keys, lists and tuples of nests (handed back
as tuples), and arrays (anything ``np.asarray`` takes; pass torch tensors as
``tensor.numpy()``). Arrays handed out are NumPy arrays sharing the C++ buffers (no copy);
arrays passed in are copied (made contiguous on the way). Blocking calls release the GIL.

- ``BatchingQueue``: rollouts from actors to the learner, batched along a dimension.
- ``DynamicBatcher``: inference requests from many actors, answered in batches.
- ``Server``: a gRPC server running one Python env per actor stream.
- ``ActorPool``: actor threads connecting env servers, the batcher and the learner queue.
- ``Client``: one env server stream, for tests and benchmarks.
"""

from libtorchbeast._C import (
    ActorPool,
    Batch,
    BatchDroppedError,
    BatchingQueue,
    Client,
    ClosedError,
    DynamicBatcher,
    EnvError,
    RpcError,
    Server,
)

__all__ = [
    "ActorPool",
    "Batch",
    "BatchDroppedError",
    "BatchingQueue",
    "Client",
    "ClosedError",
    "DynamicBatcher",
    "EnvError",
    "RpcError",
    "Server",
]
