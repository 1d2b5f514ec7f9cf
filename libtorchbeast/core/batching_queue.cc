#include "core/batching_queue.h"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace torchbeast {
namespace {

std::optional<std::chrono::milliseconds> Millis(std::optional<int64_t> ms) {
  if (!ms) return std::nullopt;
  return std::chrono::milliseconds(*ms);
}

}  // namespace

BatchingQueue::BatchingQueue(int64_t batch_dim, int64_t minimum_batch_size, int64_t maximum_batch_size,
                             std::optional<int64_t> timeout_ms, bool check_inputs,
                             std::optional<int64_t> maximum_queue_size)
    : batch_dim_(batch_dim),
      check_inputs_(check_inputs),
      queue_("BatchingQueue", minimum_batch_size, maximum_batch_size, Millis(timeout_ms), maximum_queue_size) {
  if (batch_dim < 0) throw InvalidArgument("BatchingQueue: batch_dim must be >= 0");
}

void BatchingQueue::Enqueue(ArrayNest nest) {
  if (check_inputs_) {
    if (nest.empty()) throw InvalidArgument("BatchingQueue.enqueue: the nest holds no arrays");
    std::lock_guard<std::mutex> lock(spec_mu_);
    const ArrayNest& spec = spec_ ? *spec_ : nest;
    std::string mismatch = DescribeMismatch(spec, nest, batch_dim_);
    if (!mismatch.empty()) {
      throw InvalidArgument("BatchingQueue.enqueue: " + mismatch +
                            (spec_ ? " (compared with the first nest enqueued)" : ""));
    }
    // Keep dtypes and shapes only, not the first nest's buffers.
    if (!spec_) spec_ = nest.map([](const Array& a) { return Array(a.dtype(), a.shape(), nullptr, nullptr); });
  }
  queue_.Push(std::move(nest));
}

ArrayNest BatchingQueue::DequeueMany() {
  std::vector<ArrayNest> nests = queue_.PopBatch();
  return ConcatenateNests(nests, batch_dim_);
}

void BatchingQueue::Close() { queue_.Close(); }

}  // namespace torchbeast
