"""libtorchbeast.BatchingQueue from Python: batching, timeouts, blocking, close, errors."""

import threading
import time

import numpy as np
import pytest

from libtorchbeast import BatchingQueue, ClosedError


def item(value, rows=1):
    return {"x": np.full((1, rows), value, dtype=np.int32), "y": (np.zeros((3, rows), np.float32),)}


def test_dequeue_many_concatenates_along_batch_dim():
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=2, maximum_batch_size=3)
    for v in range(4):
        queue.enqueue(item(v, rows=2))
    assert queue.size() == 4
    batch = queue.dequeue_many()
    np.testing.assert_array_equal(batch["x"], [[0, 0, 1, 1, 2, 2]])
    assert batch["y"][0].shape == (3, 6)
    assert queue.size() == 1
    assert queue.batch_dim == 1


def test_check_inputs_names_the_mismatch():
    queue = BatchingQueue(batch_dim=1, check_inputs=True)
    queue.enqueue(item(0))
    with pytest.raises(ValueError, match=r"at \['x'\]: dtype float64, expected int32"):
        queue.enqueue({"x": np.zeros((1, 1)), "y": (np.zeros((3, 1), np.float32),)})
    with pytest.raises(ValueError, match=r"at \['y'\]\[0\]: shape \[4, 1\], expected \[3, 1\]"):
        queue.enqueue({"x": np.zeros((1, 1), np.int32), "y": (np.zeros((4, 1), np.float32),)})
    with pytest.raises(ValueError, match=r"at the root: a map with keys \[x\]"):
        queue.enqueue({"x": np.zeros((1, 1), np.int32)})
    with pytest.raises(ValueError, match="batch size 2"):
        queue.enqueue({"x": np.zeros((1, 1), np.int32), "y": (np.zeros((3, 2), np.float32),)})
    assert queue.size() == 1


def test_without_check_inputs_a_mismatch_fails_dequeue():
    queue = BatchingQueue(batch_dim=0, minimum_batch_size=2, check_inputs=False)
    queue.enqueue(np.zeros((1, 2)))
    queue.enqueue(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="cannot concatenate"):
        queue.dequeue_many()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_dim": -1},
        {"minimum_batch_size": 0},
        {"minimum_batch_size": 3, "maximum_batch_size": 2},
        {"timeout_ms": -5},
        {"minimum_batch_size": 4, "maximum_queue_size": 2},
    ],
)
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        BatchingQueue(**kwargs)


def test_timeout_returns_a_partial_batch():
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=5, maximum_batch_size=5, timeout_ms=30)
    queue.enqueue(item(1))
    queue.enqueue(item(2))
    start = time.monotonic()
    batch = queue.dequeue_many()
    assert time.monotonic() - start >= 0.025
    np.testing.assert_array_equal(batch["x"], [[1, 2]])


def test_without_timeout_waits_for_minimum():
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=3, maximum_batch_size=3)
    got = []
    consumer = threading.Thread(target=lambda: got.append(queue.dequeue_many()))
    consumer.start()
    queue.enqueue(item(0))
    queue.enqueue(item(1))
    time.sleep(0.05)
    assert not got  # Still waiting (and the GIL was released, or this thread could not run).
    queue.enqueue(item(2))
    consumer.join(timeout=5)
    np.testing.assert_array_equal(got[0]["x"], [[0, 1, 2]])


def test_enqueue_blocks_while_full():
    queue = BatchingQueue(batch_dim=1, maximum_batch_size=1, maximum_queue_size=1)
    queue.enqueue(item(0))
    done = threading.Event()

    def producer():
        queue.enqueue(item(1))
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not done.wait(0.05)
    queue.dequeue_many()
    assert done.wait(5)
    thread.join()


def test_close_wakes_everyone_and_ends_iteration():
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=2, maximum_batch_size=2)
    full = BatchingQueue(batch_dim=1, maximum_queue_size=1)
    full.enqueue(item(0))
    errors = []

    def expect_closed(fn):
        try:
            fn()
        except ClosedError as e:
            errors.append(e)

    threads = [
        threading.Thread(target=expect_closed, args=(queue.dequeue_many,)),
        threading.Thread(target=expect_closed, args=(lambda: full.enqueue(item(1)),)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.05)
    queue.close()
    full.close()
    for t in threads:
        t.join(timeout=5)
    assert len(errors) == 2
    assert isinstance(errors[0], RuntimeError)
    assert queue.is_closed()
    assert list(queue) == []  # Iteration ends.
    with pytest.raises(ClosedError, match="already closed"):
        queue.close()
    with pytest.raises(ClosedError):
        queue.enqueue(item(0))


def test_iteration_yields_batches_until_closed():
    queue = BatchingQueue(batch_dim=1, maximum_batch_size=1)
    queue.enqueue(item(5))
    batches = iter(queue)
    np.testing.assert_array_equal(next(batches)["x"], [[5]])
    queue.close()
    with pytest.raises(StopIteration):
        next(batches)


def test_many_producers_and_consumers():
    rng = np.random.default_rng(1)
    per_producer = [int(n) for n in rng.integers(50, 150, size=6)]
    queue = BatchingQueue(batch_dim=1, minimum_batch_size=2, maximum_batch_size=8, timeout_ms=1,
                          maximum_queue_size=16)
    seen = []
    lock = threading.Lock()

    def produce(p, n):
        for i in range(n):
            queue.enqueue(item(p * 1000 + i))

    def consume():
        for batch in queue:
            assert batch["x"].shape[1] <= 8
            with lock:
                seen.extend(batch["x"].ravel().tolist())

    consumers = [threading.Thread(target=consume) for _ in range(3)]
    producers = [threading.Thread(target=produce, args=(p, n)) for p, n in enumerate(per_producer)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    deadline = time.monotonic() + 10
    while len(seen) < sum(per_producer) and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.close()
    for t in consumers:
        t.join(timeout=5)
    expected = [p * 1000 + i for p, n in enumerate(per_producer) for i in range(n)]
    assert sorted(seen) == expected
