#include "core/batching_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace torchbeast {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// {"x": int32 [1, n] filled with `value`}.
ArrayNest Item(int32_t value, int64_t n = 1) {
  Array a(DType::kInt32, {1, n});
  for (int64_t i = 0; i < n; ++i) static_cast<int32_t*>(a.data())[i] = value;
  return ArrayNest(ArrayNest::Map{{"x", a}});
}

const Array& X(const ArrayNest& nest) { return nest.map().at("x").leaf(); }

TEST(BatchingQueueTest, BatchesAlongBatchDim) {
  BatchingQueue q(/*batch_dim=*/1, /*minimum_batch_size=*/2, /*maximum_batch_size=*/3,
                  /*timeout_ms=*/std::nullopt, /*check_inputs=*/true, /*maximum_queue_size=*/std::nullopt);
  for (int32_t v = 0; v < 4; ++v) q.Enqueue(Item(v, /*n=*/2));
  EXPECT_EQ(q.size(), 4);
  ArrayNest batch = q.DequeueMany();
  EXPECT_EQ(X(batch).shape(), (std::vector<int64_t>{1, 6}));  // Three nests of 2 along dim 1.
  const auto* p = static_cast<const int32_t*>(X(batch).data());
  EXPECT_EQ((std::vector<int32_t>(p, p + 6)), (std::vector<int32_t>{0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(q.size(), 1);
}

TEST(BatchingQueueTest, InvalidOptionsThrow) {
  auto make = [](int64_t batch_dim, int64_t min, int64_t max, std::optional<int64_t> timeout,
                 std::optional<int64_t> cap) {
    BatchingQueue(batch_dim, min, max, timeout, /*check_inputs=*/true, cap);
  };
  EXPECT_THROW(make(/*batch_dim=*/-1, 1, 1, std::nullopt, std::nullopt), InvalidArgument);
  EXPECT_THROW(make(0, /*min=*/0, 1, std::nullopt, std::nullopt), InvalidArgument);
  EXPECT_THROW(make(0, /*min=*/2, /*max=*/1, std::nullopt, std::nullopt), InvalidArgument);
  EXPECT_THROW(make(0, 1, 1, /*timeout=*/-1, std::nullopt), InvalidArgument);
  EXPECT_THROW(make(0, /*min=*/4, 8, std::nullopt, /*cap=*/2), InvalidArgument);
}

TEST(BatchingQueueTest, CheckInputsRejectsMismatches) {
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/1, /*maximum_batch_size=*/4,
                  /*timeout_ms=*/std::nullopt, /*check_inputs=*/true, /*maximum_queue_size=*/std::nullopt);
  q.Enqueue(Item(/*value=*/0, /*n=*/3));
  EXPECT_THROW(q.Enqueue(Item(/*value=*/0, /*n=*/4)), InvalidArgument);
  try {
    q.Enqueue(ArrayNest(ArrayNest::Map{{"x", Array(DType::kFloat32, {1, 3})}}));
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("at ['x']: dtype float32, expected int32"), std::string::npos) << e.what();
  }
  EXPECT_THROW(q.Enqueue(ArrayNest(ArrayNest::Vector{})), InvalidArgument);
  EXPECT_EQ(q.size(), 1);
}

TEST(BatchingQueueTest, WithoutCheckInputsMismatchFailsDequeue) {
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/2, /*maximum_batch_size=*/2,
                  /*timeout_ms=*/std::nullopt, /*check_inputs=*/false, /*maximum_queue_size=*/std::nullopt);
  q.Enqueue(Item(/*value=*/0, /*n=*/3));
  q.Enqueue(Item(/*value=*/0, /*n=*/4));
  EXPECT_THROW(q.DequeueMany(), std::invalid_argument);
}

TEST(BatchingQueueTest, TimeoutReturnsAPartialBatch) {
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/4, /*maximum_batch_size=*/4,
                  /*timeout_ms=*/50, /*check_inputs=*/true, /*maximum_queue_size=*/std::nullopt);
  q.Enqueue(Item(1));
  auto start = steady_clock::now();
  ArrayNest batch = q.DequeueMany();
  auto waited = steady_clock::now() - start;
  EXPECT_EQ(X(batch).shape()[0], 1);
  EXPECT_GE(waited, milliseconds(45));
  EXPECT_LT(waited, milliseconds(2000));
}

TEST(BatchingQueueTest, TimeoutWaitsForAtLeastOne) {
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/4, /*maximum_batch_size=*/4,
                  /*timeout_ms=*/10, /*check_inputs=*/true, /*maximum_queue_size=*/std::nullopt);
  std::thread producer([&q] {
    std::this_thread::sleep_for(milliseconds(100));
    q.Enqueue(Item(7));
  });
  ArrayNest batch = q.DequeueMany();  // Past the timeout with nothing: waits for the first nest.
  EXPECT_EQ(X(batch).shape()[0], 1);
  producer.join();
}

TEST(BatchingQueueTest, EnqueueBlocksWhenFull) {
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/1, /*maximum_batch_size=*/1,
                  /*timeout_ms=*/std::nullopt, /*check_inputs=*/true, /*maximum_queue_size=*/2);
  q.Enqueue(Item(0));
  q.Enqueue(Item(1));
  std::atomic<bool> done{false};
  std::thread producer([&] {
    q.Enqueue(Item(2));
    done = true;
  });
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(done);
  EXPECT_EQ(q.size(), 2);
  q.DequeueMany();
  producer.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(q.size(), 2);
}

TEST(BatchingQueueTest, CloseWakesEveryoneAndSecondCloseThrows) {
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/2, /*maximum_batch_size=*/2,
                  /*timeout_ms=*/std::nullopt, /*check_inputs=*/true, /*maximum_queue_size=*/2);
  BatchingQueue full(/*batch_dim=*/0, /*minimum_batch_size=*/1, /*maximum_batch_size=*/1,
                     /*timeout_ms=*/std::nullopt, /*check_inputs=*/true, /*maximum_queue_size=*/1);
  full.Enqueue(Item(0));
  std::atomic<int> closed_errors{0};
  std::thread consumer([&] {
    try {
      q.DequeueMany();
    } catch (const ClosedError&) {
      ++closed_errors;
    }
  });
  std::thread producer([&] {
    try {
      full.Enqueue(Item(1));
    } catch (const ClosedError&) {
      ++closed_errors;
    }
  });
  std::this_thread::sleep_for(milliseconds(30));
  q.Close();
  full.Close();
  consumer.join();
  producer.join();
  EXPECT_EQ(closed_errors, 2);
  EXPECT_TRUE(q.is_closed());
  EXPECT_THROW(q.Close(), ClosedError);
  EXPECT_THROW(q.Enqueue(Item(0)), ClosedError);
  EXPECT_THROW(q.DequeueMany(), ClosedError);
}

TEST(BatchingQueueTest, ManyProducersAndConsumers) {
  constexpr int kProducers = 8;
  constexpr int kConsumers = 3;
  constexpr int kPerProducer = 500;
  BatchingQueue q(/*batch_dim=*/0, /*minimum_batch_size=*/2, /*maximum_batch_size=*/7,
                  /*timeout_ms=*/1, /*check_inputs=*/true, /*maximum_queue_size=*/16);
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&q, p] {
      for (int i = 0; i < kPerProducer; ++i) q.Enqueue(Item(p * kPerProducer + i));
    });
  }
  std::vector<std::vector<int32_t>> seen(kConsumers);
  std::vector<std::thread> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    consumers.emplace_back([&q, &seen, c] {
      try {
        for (;;) {
          ArrayNest batch = q.DequeueMany();
          const Array& x = X(batch);
          EXPECT_LE(x.shape()[0], 7);
          const auto* p = static_cast<const int32_t*>(x.data());
          seen[c].insert(seen[c].end(), p, p + x.numel());
        }
      } catch (const ClosedError&) {
      }
    });
  }
  for (auto& t : producers) t.join();
  while (q.size() > 0) std::this_thread::sleep_for(milliseconds(1));
  std::this_thread::sleep_for(milliseconds(20));  // Let the last batches be concatenated.
  q.Close();
  for (auto& t : consumers) t.join();
  std::vector<int> count(kProducers * kPerProducer, 0);
  for (const auto& s : seen)
    for (int32_t v : s) ++count[v];
  for (int v = 0; v < kProducers * kPerProducer; ++v) ASSERT_EQ(count[v], 1) << "value " << v;
}

}  // namespace
}  // namespace torchbeast
