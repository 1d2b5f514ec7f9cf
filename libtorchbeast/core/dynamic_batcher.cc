#include "core/dynamic_batcher.h"

#include <chrono>
#include <exception>
#include <string>
#include <utility>

namespace torchbeast {

DynamicBatcher::Batch::Batch(int64_t batch_dim, bool check_outputs, ArrayNest inputs, std::vector<int64_t> sizes,
                             std::vector<Request> requests)
    : batch_dim_(batch_dim),
      check_outputs_(check_outputs),
      inputs_(std::move(inputs)),
      sizes_(std::move(sizes)),
      requests_(std::move(requests)) {}

DynamicBatcher::Batch::~Batch() {
  if (!answered_) {
    FailAll(std::make_exception_ptr(
        BatchDroppedError("DynamicBatcher: the batch holding these inputs was dropped before its outputs were set")));
  }
}

int64_t DynamicBatcher::Batch::batch_size() const {
  int64_t total = 0;
  for (int64_t s : sizes_) total += s;
  return total;
}

void DynamicBatcher::Batch::FailAll(std::exception_ptr error) {
  answered_ = true;
  for (Request& r : requests_) r.outputs.set_exception(error);
}

void DynamicBatcher::Batch::SetOutputs(ArrayNest outputs) {
  if (answered_) throw Error("DynamicBatcher.Batch: outputs were already set");
  std::vector<ArrayNest> pieces;
  try {
    if (check_outputs_) {
      if (outputs.empty()) throw InvalidArgument("the output nest holds no arrays");
      const int64_t expected = batch_size();
      outputs.for_each([&](const Array& a) {
        if (a.ndim() <= batch_dim_ || a.shape()[batch_dim_] != expected) {
          throw InvalidArgument("output of shape " + ShapeString(a.shape()) + " has no size " +
                                std::to_string(expected) + " at batch dim " + std::to_string(batch_dim_) +
                                " (the inputs' batch size)");
        }
      });
    }
    pieces = SplitNest(outputs, batch_dim_, sizes_);
  } catch (const std::exception& e) {
    InvalidArgument error(std::string("DynamicBatcher.Batch.set_outputs: ") + e.what());
    FailAll(std::make_exception_ptr(error));
    throw error;
  }
  answered_ = true;
  for (std::size_t i = 0; i < requests_.size(); ++i) requests_[i].outputs.set_value(std::move(pieces[i]));
}

DynamicBatcher::DynamicBatcher(int64_t batch_dim, int64_t minimum_batch_size, int64_t maximum_batch_size,
                               std::optional<int64_t> timeout_ms, bool check_outputs)
    : batch_dim_(batch_dim),
      check_outputs_(check_outputs),
      queue_("DynamicBatcher", minimum_batch_size, maximum_batch_size,
             timeout_ms ? std::optional<std::chrono::milliseconds>(*timeout_ms) : std::nullopt,
             /*capacity=*/std::nullopt) {
  if (batch_dim < 0) throw InvalidArgument("DynamicBatcher: batch_dim must be >= 0");
}

ArrayNest DynamicBatcher::Compute(ArrayNest inputs) {
  BatchSize(inputs, batch_dim_);  // Throws InvalidArgument here, to this caller, if unbatchable.
  Request request{std::move(inputs), {}};
  std::future<ArrayNest> outputs = request.outputs.get_future();
  queue_.Push(std::move(request));
  return outputs.get();  // Ends when the batch is answered, dropped or the batcher closed.
}

std::unique_ptr<DynamicBatcher::Batch> DynamicBatcher::GetBatch() {
  std::vector<Request> requests = queue_.PopBatch();
  std::vector<ArrayNest> inputs;
  std::vector<int64_t> sizes;
  inputs.reserve(requests.size());
  sizes.reserve(requests.size());
  for (Request& r : requests) {
    sizes.push_back(BatchSize(r.inputs, batch_dim_));
    inputs.push_back(std::move(r.inputs));
  }
  try {
    ArrayNest batch = ConcatenateNests(inputs, batch_dim_);
    return std::unique_ptr<Batch>(
        new Batch(batch_dim_, check_outputs_, std::move(batch), std::move(sizes), std::move(requests)));
  } catch (const std::exception& e) {
    InvalidArgument error(std::string("DynamicBatcher: the callers' inputs do not batch: ") + e.what());
    for (Request& r : requests) r.outputs.set_exception(std::make_exception_ptr(error));
    throw error;
  }
}

void DynamicBatcher::Close() {
  std::vector<Request> left = queue_.Close();
  auto error = std::make_exception_ptr(ClosedError("DynamicBatcher was closed before these inputs were batched"));
  for (Request& r : left) r.outputs.set_exception(error);
}

}  // namespace torchbeast
