"""libtorchbeast: the torch-free C++ core of PolyBeast.

Everything moves nests of NumPy arrays: dicts with str keys, lists and tuples of nests, and
arrays (anything ``np.asarray`` takes; pass torch tensors as ``tensor.numpy()``). Arrays handed
out share the C++ buffers (no copy); arrays passed in are copied. Blocking calls release the GIL.
"""

from libtorchbeast._C import (
    Batch,
    BatchDroppedError,
    BatchingQueue,
    ClosedError,
    DynamicBatcher,
    EnvError,
    RpcError,
)

__all__ = [
    "Batch",
    "BatchDroppedError",
    "BatchingQueue",
    "ClosedError",
    "DynamicBatcher",
    "EnvError",
    "RpcError",
]
