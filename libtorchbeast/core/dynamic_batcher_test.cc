#include "core/dynamic_batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace torchbeast {
namespace {

using std::chrono::milliseconds;

// int32 [1, n] filled with `value`.
Array Filled(int32_t value, int64_t n = 1) {
  Array a(DType::kInt32, {1, n});
  for (int64_t i = 0; i < n; ++i) static_cast<int32_t*>(a.data())[i] = value;
  return a;
}

int32_t First(const Array& a) { return static_cast<const int32_t*>(a.data())[0]; }

// Answers every batch with {"y": 2 * x, "n": batch size} until the batcher closes.
void Double(DynamicBatcher* batcher, std::atomic<int>* batches = nullptr) {
  try {
    for (;;) {
      std::unique_ptr<DynamicBatcher::Batch> batch = batcher->GetBatch();
      const Array& x = batch->inputs().leaf();
      Array y(DType::kInt32, x.shape());
      for (int64_t i = 0; i < x.numel(); ++i)
        static_cast<int32_t*>(y.data())[i] = 2 * static_cast<const int32_t*>(x.data())[i];
      Array n = Filled(static_cast<int32_t>(batch->num_callers()), batch->batch_size());
      batch->SetOutputs(ArrayNest(ArrayNest::Map{{"y", y}, {"n", n}}));
      if (batches) ++*batches;
    }
  } catch (const ClosedError&) {
  }
}

TEST(DynamicBatcherTest, ComputeRoundTripsThroughTheModel) {
  DynamicBatcher batcher(/*batch_dim=*/1, /*minimum_batch_size=*/1, /*maximum_batch_size=*/8,
                         /*timeout_ms=*/std::nullopt, /*check_outputs=*/true);
  std::thread model(Double, &batcher, nullptr);
  ArrayNest out = batcher.Compute(ArrayNest(Filled(/*value=*/21, /*n=*/3)));
  const Array& y = out.map().at("y").leaf();
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(First(y), 42);
  batcher.Close();
  model.join();
}

TEST(DynamicBatcherTest, SplitsOutputsBackToEachCaller) {
  DynamicBatcher batcher(/*batch_dim=*/1, /*minimum_batch_size=*/4, /*maximum_batch_size=*/4,
                         /*timeout_ms=*/std::nullopt, /*check_outputs=*/true);
  std::vector<std::thread> callers;
  std::vector<int32_t> results(4, 0);
  std::vector<int64_t> widths(4, 0);
  for (int i = 0; i < 4; ++i) {
    callers.emplace_back([&, i] {
      ArrayNest out = batcher.Compute(ArrayNest(Filled(/*value=*/i, /*n=*/i + 1)));
      results[i] = First(out.map().at("y").leaf());
      widths[i] = out.map().at("y").leaf().shape()[1];
      EXPECT_EQ(First(out.map().at("n").leaf()), 4);  // All four were in one batch.
    });
  }
  std::unique_ptr<DynamicBatcher::Batch> batch = batcher.GetBatch();
  EXPECT_EQ(batch->num_callers(), 4);
  EXPECT_EQ(batch->batch_size(), 1 + 2 + 3 + 4);
  const Array& x = batch->inputs().leaf();
  Array y(DType::kInt32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i)
    static_cast<int32_t*>(y.data())[i] = 2 * static_cast<const int32_t*>(x.data())[i];
  batch->SetOutputs(ArrayNest(ArrayNest::Map{{"y", y}, {"n", Filled(4, 10)}}));
  for (auto& t : callers) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(results[i], 2 * i);
    EXPECT_EQ(widths[i], i + 1);
  }
  EXPECT_THROW(batch->SetOutputs(ArrayNest(Filled(0, 10))), Error);
}

TEST(DynamicBatcherTest, TimeoutMakesSmallerBatches) {
  DynamicBatcher batcher(/*batch_dim=*/1, /*minimum_batch_size=*/8, /*maximum_batch_size=*/8,
                         /*timeout_ms=*/20, /*check_outputs=*/true);
  std::thread model(Double, &batcher, nullptr);
  ArrayNest out = batcher.Compute(ArrayNest(Filled(5)));
  EXPECT_EQ(First(out.map().at("n").leaf()), 1);
  batcher.Close();
  model.join();
}

TEST(DynamicBatcherTest, BadOutputsFailCallersAndConsumer) {
  DynamicBatcher batcher(/*batch_dim=*/1, /*minimum_batch_size=*/1, /*maximum_batch_size=*/1,
                         /*timeout_ms=*/std::nullopt, /*check_outputs=*/true);
  std::string caller_error;
  std::thread caller([&] {
    try {
      batcher.Compute(ArrayNest(Filled(1, 2)));
    } catch (const InvalidArgument& e) {
      caller_error = e.what();
    }
  });
  std::unique_ptr<DynamicBatcher::Batch> batch = batcher.GetBatch();
  EXPECT_THROW(batch->SetOutputs(ArrayNest(Filled(0, /*n=*/3))), InvalidArgument);
  caller.join();
  EXPECT_NE(caller_error.find("has no size 2 at batch dim 1"), std::string::npos) << caller_error;
}

TEST(DynamicBatcherTest, DroppedBatchFailsItsCallers) {
  DynamicBatcher batcher(/*batch_dim=*/0, /*minimum_batch_size=*/2, /*maximum_batch_size=*/2,
                         /*timeout_ms=*/std::nullopt, /*check_outputs=*/false);
  std::atomic<int> dropped{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 2; ++i) {
    callers.emplace_back([&] {
      try {
        batcher.Compute(ArrayNest(Filled(1)));
      } catch (const BatchDroppedError&) {
        ++dropped;
      }
    });
  }
  batcher.GetBatch().reset();  // Taken and dropped without outputs.
  for (auto& t : callers) t.join();
  EXPECT_EQ(dropped, 2);
}

TEST(DynamicBatcherTest, CloseFailsWaitingCallersAndConsumer) {
  DynamicBatcher batcher(/*batch_dim=*/0, /*minimum_batch_size=*/3, /*maximum_batch_size=*/3,
                         /*timeout_ms=*/std::nullopt, /*check_outputs=*/true);
  std::atomic<int> closed{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 2; ++i) {
    callers.emplace_back([&] {
      try {
        batcher.Compute(ArrayNest(Filled(1)));
      } catch (const ClosedError&) {
        ++closed;
      }
    });
  }
  std::thread consumer([&] { EXPECT_THROW(batcher.GetBatch(), ClosedError); });
  while (batcher.size() < 2) std::this_thread::sleep_for(milliseconds(1));
  batcher.Close();
  for (auto& t : callers) t.join();
  consumer.join();
  EXPECT_EQ(closed, 2);
  EXPECT_THROW(batcher.Compute(ArrayNest(Filled(1))), ClosedError);
  EXPECT_THROW(batcher.Close(), ClosedError);
}

TEST(DynamicBatcherTest, UnbatchableInputsFailCallers) {
  DynamicBatcher batcher(/*batch_dim=*/0, /*minimum_batch_size=*/2, /*maximum_batch_size=*/2,
                         /*timeout_ms=*/std::nullopt, /*check_outputs=*/true);
  EXPECT_THROW(batcher.Compute(ArrayNest(ArrayNest::Vector{})), InvalidArgument);
  std::atomic<int> failed{0};
  std::thread a([&] {
    try {
      batcher.Compute(ArrayNest(Filled(1)));
    } catch (const InvalidArgument&) {
      ++failed;
    }
  });
  std::thread b([&] {
    try {
      batcher.Compute(ArrayNest(Array(DType::kFloat32, {1, 1})));
    } catch (const InvalidArgument&) {
      ++failed;
    }
  });
  EXPECT_THROW(batcher.GetBatch(), InvalidArgument);
  a.join();
  b.join();
  EXPECT_EQ(failed, 2);
}

TEST(DynamicBatcherTest, ManyCallersManyConsumers) {
  constexpr int kCallers = 16;
  constexpr int kCallsEach = 200;
  DynamicBatcher batcher(/*batch_dim=*/1, /*minimum_batch_size=*/1, /*maximum_batch_size=*/5,
                         /*timeout_ms=*/1, /*check_outputs=*/true);
  std::atomic<int> batches{0};
  std::vector<std::thread> models;
  for (int m = 0; m < 2; ++m) models.emplace_back(Double, &batcher, &batches);
  std::vector<std::thread> callers;
  std::atomic<int> wrong{0};
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < kCallsEach; ++i) {
        int32_t v = c * kCallsEach + i;
        ArrayNest out = batcher.Compute(ArrayNest(Filled(v)));
        if (First(out.map().at("y").leaf()) != 2 * v) ++wrong;
      }
    });
  }
  for (auto& t : callers) t.join();
  batcher.Close();
  for (auto& t : models) t.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(batches, 0);
  EXPECT_LE(batches, kCallers * kCallsEach);
}

}  // namespace
}  // namespace torchbeast
