// DynamicBatcher: many callers each submit a nest of inputs and wait; a consumer (the
// inference thread) takes them as one batch concatenated along `batch_dim`, computes, and sets
// one output nest, which is split back along `batch_dim` and handed to each caller.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <vector>

#include "core/array.h"
#include "core/blocking_batch_queue.h"

namespace torchbeast {

class DynamicBatcher {
 private:
  struct Request {
    ArrayNest inputs;
    std::promise<ArrayNest> outputs;
  };

 public:
  // One batch of requests. Destroying it before SetOutputs() fails its callers with
  // BatchDroppedError, so nobody waits for outputs that will never come.
  class Batch {
   public:
    ~Batch();
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

    // The callers' inputs, concatenated along batch_dim.
    const ArrayNest& inputs() const { return inputs_; }
    // Number of callers in this batch.
    int64_t num_callers() const { return static_cast<int64_t>(requests_.size()); }
    // Total size along batch_dim of the inputs (and of the outputs expected).
    int64_t batch_size() const;

    // Splits `outputs` along batch_dim and answers every caller. On a bad output nest (a leaf
    // whose size at batch_dim is not batch_size()) throws InvalidArgument and fails every
    // caller with the same message. Throws Error if the outputs were already set.
    void SetOutputs(ArrayNest outputs);

   private:
    friend class DynamicBatcher;
    Batch(int64_t batch_dim, bool check_outputs, ArrayNest inputs, std::vector<int64_t> sizes,
          std::vector<Request> requests);
    void FailAll(std::exception_ptr error);

    const int64_t batch_dim_;
    const bool check_outputs_;
    const ArrayNest inputs_;
    const std::vector<int64_t> sizes_;  // Each caller's size along batch_dim.
    std::vector<Request> requests_;
    bool answered_ = false;  // Only the batch's owner touches it: no lock.
  };

  // Batches hold between minimum_batch_size and maximum_batch_size callers; with `timeout_ms`,
  // GetBatch() returns fewer than minimum_batch_size (at least one) once the timeout has passed.
  // With `check_outputs`, SetOutputs() checks every output leaf before answering anyone.
  DynamicBatcher(int64_t batch_dim, int64_t minimum_batch_size, int64_t maximum_batch_size,
                 std::optional<int64_t> timeout_ms, bool check_outputs);

  // Submits `inputs` and blocks until the batch holding them is answered (returns this
  // caller's part of the outputs) or fails (throws: BatchDroppedError, InvalidArgument for bad
  // outputs, ClosedError if the batcher was closed before the batch was taken).
  ArrayNest Compute(ArrayNest inputs);

  // Blocks until a batch is ready. Throws ClosedError once the batcher is closed. If the
  // callers' inputs do not concatenate, fails them and throws InvalidArgument.
  std::unique_ptr<Batch> GetBatch();

  // Fails waiting callers whose inputs were not taken yet with ClosedError and wakes GetBatch().
  // Batches already taken stay valid. Throws ClosedError if already closed.
  void Close();

  int64_t size() const { return queue_.size(); }
  bool is_closed() const { return queue_.is_closed(); }
  int64_t batch_dim() const { return batch_dim_; }

 private:
  const int64_t batch_dim_;
  const bool check_outputs_;
  BlockingBatchQueue<Request> queue_;
};

}  // namespace torchbeast
