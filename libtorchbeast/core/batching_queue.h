// BatchingQueue: producers enqueue nests of arrays, a consumer dequeues them concatenated
// along `batch_dim`. The learner queue of PolyBeast: actors enqueue rollouts, the learner takes
// batches of them.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>

#include "core/array.h"
#include "core/blocking_batch_queue.h"

namespace torchbeast {

class BatchingQueue {
 public:
  // minimum/maximum_batch_size count enqueued nests (not rows along batch_dim). With
  // `timeout_ms`, DequeueMany() returns fewer than minimum_batch_size (at least one) once the
  // timeout has passed. With `maximum_queue_size`, Enqueue() blocks while the queue is full.
  // With `check_inputs`, Enqueue() checks every nest against the first one ever enqueued
  // (structure, dtypes, shapes except at batch_dim, one batch size per nest) and throws
  // InvalidArgument on a mismatch; without it, a mismatch fails DequeueMany().
  BatchingQueue(int64_t batch_dim, int64_t minimum_batch_size, int64_t maximum_batch_size,
                std::optional<int64_t> timeout_ms, bool check_inputs, std::optional<int64_t> maximum_queue_size);

  // Blocks while the queue is full. Throws ClosedError once the queue is closed.
  void Enqueue(ArrayNest nest);
  // Blocks until a batch is ready (see above). Throws ClosedError once the queue is closed,
  // even if nests are left in it (they are dropped).
  ArrayNest DequeueMany();
  // Wakes every blocked caller with ClosedError. Throws ClosedError if already closed.
  void Close();

  int64_t size() const { return queue_.size(); }
  bool is_closed() const { return queue_.is_closed(); }
  int64_t batch_dim() const { return batch_dim_; }

 private:
  const int64_t batch_dim_;
  const bool check_inputs_;
  BlockingBatchQueue<ArrayNest> queue_;

  std::mutex spec_mu_;
  std::optional<ArrayNest> spec_ /* GUARDED_BY(spec_mu_) */;  // The first nest enqueued.
};

}  // namespace torchbeast
