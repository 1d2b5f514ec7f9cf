"""libtorchbeast.DynamicBatcher from Python: batching calls, splitting outputs, failures."""

import threading
import time

import numpy as np
import pytest

from libtorchbeast import Batch, BatchDroppedError, ClosedError, DynamicBatcher


def serve(batcher, fn):
    """Answers every batch with fn(inputs) until the batcher closes; returns the thread."""

    def loop():
        for batch in batcher:
            batch.set_outputs(fn(batch.get_inputs()))

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


def call_all(batcher, inputs):
    """compute() from one thread per input; returns the outputs or exceptions in order."""
    results = [None] * len(inputs)

    def call(i):
        try:
            results[i] = batcher.compute(inputs[i])
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    return threads, results


def test_compute_returns_this_callers_rows():
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=3, maximum_batch_size=3)
    model = serve(batcher, lambda x: {"y": x["x"] * 2, "n": np.full(x["x"].shape, x["x"].shape[1])})
    inputs = [{"x": np.full((1, i + 1), i, np.int64)} for i in range(3)]
    threads, results = call_all(batcher, inputs)
    for t in threads:
        t.join(timeout=5)
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((1, i + 1), 2 * i))
        assert (out["n"] == 6).all()  # 1 + 2 + 3 rows in one batch.
    batcher.close()
    model.join(timeout=5)


def test_batch_object():
    batcher = DynamicBatcher(batch_dim=0, minimum_batch_size=2, maximum_batch_size=2)
    threads, results = call_all(batcher, [np.zeros((1, 2)), np.ones((2, 2))])
    batch = batcher.get_batch()
    assert isinstance(batch, Batch)
    assert batch.num_callers == 2 and batch.batch_size == 3
    inputs = batch.get_inputs()
    assert inputs.shape == (3, 2)
    batch.set_outputs(inputs + 1)
    for t in threads:
        t.join(timeout=5)
    assert {r.shape for r in results} == {(1, 2), (2, 2)}
    with pytest.raises(RuntimeError, match="already set"):
        batch.set_outputs(inputs)


def test_timeout_hands_out_smaller_batches():
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=10, maximum_batch_size=10, timeout_ms=20)
    model = serve(batcher, lambda x: np.full(x.shape, x.shape[1]))
    out = batcher.compute(np.zeros((1, 1)))
    assert out[0, 0] == 1
    batcher.close()
    model.join(timeout=5)


def test_bad_outputs_fail_the_model_and_the_callers():
    batcher = DynamicBatcher(batch_dim=1, check_outputs=True)
    threads, results = call_all(batcher, [np.zeros((1, 2))])
    batch = batcher.get_batch()
    with pytest.raises(ValueError, match="has no size 2 at batch dim 1"):
        batch.set_outputs(np.zeros((1, 3)))
    threads[0].join(timeout=5)
    assert isinstance(results[0], ValueError)
    assert "has no size 2" in str(results[0])


def test_bad_outputs_without_check_outputs_still_fail_cleanly():
    batcher = DynamicBatcher(batch_dim=1, check_outputs=False)
    threads, results = call_all(batcher, [np.zeros((1, 2))])
    with pytest.raises(ValueError, match="cannot split"):
        batcher.get_batch().set_outputs(np.zeros((1, 3)))
    threads[0].join(timeout=5)
    assert isinstance(results[0], ValueError)


def test_dropped_batch_fails_its_callers():
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=2, maximum_batch_size=2)
    threads, results = call_all(batcher, [np.zeros((1, 1)), np.zeros((1, 1))])
    batch = batcher.get_batch()
    del batch  # Dropped without outputs: the callers must not hang.
    for t in threads:
        t.join(timeout=5)
    assert all(isinstance(r, BatchDroppedError) for r in results)
    assert "dropped before its outputs were set" in str(results[0])


def test_close_fails_waiting_callers_and_ends_iteration():
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=5, maximum_batch_size=5)
    threads, results = call_all(batcher, [np.zeros((1, 1))] * 2)
    deadline = time.monotonic() + 5
    while batcher.size() < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    batcher.close()
    for t in threads:
        t.join(timeout=5)
    assert all(isinstance(r, ClosedError) for r in results)
    assert list(batcher) == []
    with pytest.raises(ClosedError):
        batcher.get_batch()
    with pytest.raises(ClosedError):
        batcher.compute(np.zeros((1, 1)))
    with pytest.raises(ClosedError):
        batcher.close()


def test_unbatchable_inputs():
    batcher = DynamicBatcher(batch_dim=2)
    with pytest.raises(ValueError, match="out of range"):
        batcher.compute(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="holds no arrays|without arrays"):
        batcher.compute(())
    with pytest.raises(ValueError):
        DynamicBatcher(minimum_batch_size=0)


def test_many_callers():
    rng = np.random.default_rng(2)
    batcher = DynamicBatcher(batch_dim=1, minimum_batch_size=1, maximum_batch_size=8, timeout_ms=1)
    sizes = []
    model = serve(batcher, lambda x: (sizes.append(x["v"].shape[1]), {"v": x["v"] + 1})[1])
    values = rng.integers(0, 1000, size=(16, 30))
    errors = []

    def caller(row):
        for v in row:
            out = batcher.compute({"v": np.full((1, 1), v)})
            if out["v"][0, 0] != v + 1:
                errors.append((v, out))

    threads = [threading.Thread(target=caller, args=(row,)) for row in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    model.join(timeout=5)
    assert not errors
    assert sum(sizes) == values.size
    assert max(sizes) <= 8
