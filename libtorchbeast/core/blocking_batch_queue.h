// BlockingBatchQueue<T>: the waiting logic shared by BatchingQueue and DynamicBatcher.
//
// A FIFO of items. Push() blocks while the queue holds `capacity` items; PopBatch() takes
// between `minimum` and `maximum` items: it returns as soon as `minimum` are there, or once
// `timeout` has passed since the call began and at least one is there. Close() wakes everyone:
// blocked and later Push() / PopBatch() calls throw ClosedError, and the items still queued are
// handed to the caller of Close() (the batcher fails their callers).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/errors.h"

namespace torchbeast {

template <typename T>
class BlockingBatchQueue {
 public:
  BlockingBatchQueue(const std::string& owner, int64_t minimum, int64_t maximum,
                     std::optional<std::chrono::milliseconds> timeout, std::optional<int64_t> capacity)
      : owner_(owner), minimum_(minimum), maximum_(maximum), timeout_(timeout), capacity_(capacity) {
    if (minimum < 1) throw InvalidArgument(owner + ": minimum_batch_size must be >= 1");
    if (maximum < minimum) throw InvalidArgument(owner + ": maximum_batch_size must be >= minimum_batch_size");
    if (timeout && timeout->count() < 0) throw InvalidArgument(owner + ": timeout_ms must be >= 0");
    if (capacity && *capacity < minimum) {
      // Otherwise PopBatch() could wait for more items than Push() lets in.
      throw InvalidArgument(owner + ": maximum_queue_size must be >= minimum_batch_size");
    }
  }

  BlockingBatchQueue(const BlockingBatchQueue&) = delete;
  BlockingBatchQueue& operator=(const BlockingBatchQueue&) = delete;

  void Push(T item) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Ends when there is room or the queue is closed.
      can_push_.wait(lock, [this] { return closed_ || !capacity_ || Size() < *capacity_; });
      if (closed_) throw ClosedError(owner_ + " is closed");
      items_.push_back(std::move(item));
    }
    can_pop_.notify_one();
  }

  std::vector<T> PopBatch() {
    std::vector<T> batch;
    bool more_left = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto enough = [this] { return closed_ || Size() >= minimum_; };
      if (timeout_) {
        // Ends when `minimum` items are there, the queue is closed, or the timeout passes...
        can_pop_.wait_for(lock, *timeout_, enough);
        // ...and then, if nothing came at all, when the first item comes or the queue closes.
        can_pop_.wait(lock, [this] { return closed_ || !items_.empty(); });
      } else {
        can_pop_.wait(lock, enough);  // Ends when `minimum` items are there or the queue is closed.
      }
      if (closed_) throw ClosedError(owner_ + " is closed");
      const int64_t n = std::min<int64_t>(Size(), maximum_);
      batch.reserve(n);
      for (int64_t i = 0; i < n; ++i) {
        batch.push_back(std::move(items_.front()));
        items_.pop_front();
      }
      more_left = !items_.empty();
    }
    can_push_.notify_all();
    if (more_left) can_pop_.notify_one();  // Another consumer may have enough now.
    return batch;
  }

  // Closes the queue and returns the items left in it. Throws ClosedError if already closed.
  std::vector<T> Close() {
    std::vector<T> left;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) throw ClosedError(owner_ + " was already closed");
      closed_ = true;
      for (T& item : items_) left.push_back(std::move(item));
      items_.clear();
    }
    can_push_.notify_all();
    can_pop_.notify_all();
    return left;
  }

  int64_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return Size();
  }

  bool is_closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

 private:
  int64_t Size() const { return static_cast<int64_t>(items_.size()); }  // Needs mu_.

  const std::string owner_;  // "BatchingQueue" or "DynamicBatcher", for messages.
  const int64_t minimum_;
  const int64_t maximum_;
  const std::optional<std::chrono::milliseconds> timeout_;
  const std::optional<int64_t> capacity_;

  mutable std::mutex mu_;
  std::condition_variable can_push_;  // Signalled when items leave or the queue closes.
  std::condition_variable can_pop_;   // Signalled when items come or the queue closes.
  std::deque<T> items_ /* GUARDED_BY(mu_) */;
  bool closed_ /* GUARDED_BY(mu_) */ = false;
};

}  // namespace torchbeast
