#include "core/actor_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/env_server.h"
#include "core/test_util.h"

namespace torchbeast {
namespace {

using std::chrono::milliseconds;
using testing::CountingEnv;
using testing::TempSocket;

EnvFactory Counting(int32_t id, int32_t episode_length, int64_t fail_at_step = -1) {
  return [=]() -> std::unique_ptr<Env> {
    return std::make_unique<CountingEnv>(id, episode_length, /*truncate=*/false, fail_at_step);
  };
}

// Answers with action 0, baseline 0.5 and agent_state + 1 (state: float32 [1, B, 2]) until
// the batcher closes.
void Model(DynamicBatcher* batcher, bool with_action = true) {
  try {
    for (;;) {
      auto batch = batcher->GetBatch();
      const int64_t b = batch->batch_size();
      const Array& state = batch->inputs().map().at("agent_state").vector()[0].leaf();
      Array next(DType::kFloat32, state.shape());
      for (int64_t i = 0; i < state.numel(); ++i)
        static_cast<float*>(next.data())[i] = static_cast<const float*>(state.data())[i] + 1.0f;
      Array baseline(DType::kFloat32, {1, b});
      for (int64_t i = 0; i < b; ++i) static_cast<float*>(baseline.data())[i] = 0.5f;
      ArrayNest::Map out{{"baseline", baseline}, {"agent_state", ArrayNest::Vector{next}}};
      if (with_action) out.emplace("action", Array::Zeros(DType::kInt64, {1, b}));
      batch->SetOutputs(ArrayNest(std::move(out)));
    }
  } catch (const ClosedError&) {
  }
}

ArrayNest InitialState() { return ArrayNest(ArrayNest::Vector{Array::Zeros(DType::kFloat32, {1, 1, 2})}); }

struct Fixture {
  Fixture()
      : learner_queue(std::make_shared<BatchingQueue>(/*batch_dim=*/1, /*minimum_batch_size=*/1,
                                                      /*maximum_batch_size=*/1, /*timeout_ms=*/std::nullopt,
                                                      /*check_inputs=*/true, /*maximum_queue_size=*/4)),
        batcher(std::make_shared<DynamicBatcher>(/*batch_dim=*/1, /*minimum_batch_size=*/1,
                                                 /*maximum_batch_size=*/4, /*timeout_ms=*/1,
                                                 /*check_outputs=*/true)) {}
  void Close() {
    learner_queue->Close();
    batcher->Close();
  }
  std::shared_ptr<BatchingQueue> learner_queue;
  std::shared_ptr<DynamicBatcher> batcher;
};

int32_t EnvId(const ArrayNest& rollout, int64_t t = 0) {
  return static_cast<const int32_t*>(rollout.map().at("observation").map().at("id").leaf().data())[t];
}

TEST(ActorPoolTest, RolloutsHaveTheRightShapesAndOverlap) {
  constexpr int64_t kUnroll = 4;
  EnvServer a(Counting(/*id=*/0, /*episode_length=*/6), TempSocket("a"));
  EnvServer b(Counting(/*id=*/1, /*episode_length=*/6), TempSocket("b"));
  a.Start();
  b.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ActorPool pool(kUnroll, f.learner_queue, f.batcher, {a.address(), b.address()}, InitialState());
  std::thread runner([&pool] { pool.Run(); });

  std::map<int32_t, std::vector<ArrayNest>> by_env;
  for (int i = 0; i < 20; ++i) {
    ArrayNest item = f.learner_queue->DequeueMany();
    const ArrayNest& rollout = item.map().at("rollout");
    const auto& m = rollout.map();
    EXPECT_EQ(m.at("observation").map().at("frame").leaf().shape(), (std::vector<int64_t>{kUnroll + 1, 1, 2, 3}));
    for (const char* key : {"reward", "done", "truncated", "episode_step", "episode_return", "last_action", "action",
                            "baseline"}) {
      EXPECT_EQ(m.at(key).leaf().shape(), (std::vector<int64_t>{kUnroll + 1, 1})) << key;
    }
    EXPECT_EQ(m.count("agent_state"), 0u);
    EXPECT_EQ(m.at("done").leaf().dtype(), DType::kBool);
    const Array& state = item.map().at("initial_agent_state").vector()[0].leaf();
    EXPECT_EQ(state.shape(), (std::vector<int64_t>{1, 1, 2}));
    by_env[EnvId(rollout)].push_back(item);
  }
  f.Close();
  runner.join();
  model.join();
  EXPECT_GE(pool.count(), 20 * kUnroll);

  for (const auto& [id, items] : by_env) {
    for (std::size_t k = 0; k < items.size(); ++k) {
      const ArrayNest& rollout = items[k].map().at("rollout");
      // The state went up by one per step: rollout k starts at step k * kUnroll.
      const float s = static_cast<const float*>(items[k].map().at("initial_agent_state").vector()[0].leaf().data())[0];
      EXPECT_EQ(s, static_cast<float>(k * kUnroll)) << "env " << id << " rollout " << k;
      const auto* frame = static_cast<const uint8_t*>(rollout.map().at("observation").map().at("frame").leaf().data());
      const auto* done = static_cast<const bool*>(rollout.map().at("done").leaf().data());
      for (int64_t t = 0; t <= kUnroll; ++t) {
        const int64_t global_step = static_cast<int64_t>(k) * kUnroll + t;
        EXPECT_EQ(frame[t * 6], global_step % 6) << "env " << id << " rollout " << k << " t " << t;
        EXPECT_EQ(done[t], global_step % 6 == 0);
      }
      if (k > 0) {  // Overlap by one: same last/first step.
        const ArrayNest& prev = items[k - 1].map().at("rollout");
        const auto* prev_frame = static_cast<const uint8_t*>(prev.map().at("observation").map().at("frame").leaf().data());
        EXPECT_EQ(prev_frame[kUnroll * 6], frame[0]);
      }
    }
  }
}

// A model for truncating CountingEnvs: action = frame + 1, baseline = 10 * frame + id + 0.5,
// agent_state + 1. Records the inputs of every call made on a final observation (frame ==
// episode_length, which no ordinary step shows: the server resets first).
class TruncationModel {
 public:
  struct FinalCall {
    int32_t id, episode_step;
    bool done, truncated;
    float reward, episode_return, state;
    int64_t last_action;
  };

  TruncationModel(DynamicBatcher* batcher, int32_t episode_length, std::string baseline_key = "baseline",
                   std::vector<int64_t> baseline_shape = {1})
      : thread_([this, batcher, episode_length, baseline_key, baseline_shape] {
          Loop(batcher, episode_length, baseline_key, baseline_shape);
        }) {}
  ~TruncationModel() { thread_.join(); }

  std::vector<FinalCall> final_calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return final_calls_;
  }

 private:
  template <typename T>
  static T At(const ArrayNest::Map& inputs, const char* key, int64_t i) {
    return static_cast<const T*>(inputs.at(key).leaf().data())[i];
  }

  // `baseline_shape`: per-caller trailing shape of the baseline output ([1, B, *shape[1:]]).
  void Loop(DynamicBatcher* batcher, int32_t episode_length, const std::string& baseline_key,
            const std::vector<int64_t>& baseline_shape) {
    try {
      for (;;) {
        auto batch = batcher->GetBatch();
        const int64_t b = batch->batch_size();
        const ArrayNest::Map& in = batch->inputs().map();
        const Array& state = in.at("agent_state").vector()[0].leaf();
        Array next(DType::kFloat32, state.shape());
        for (int64_t i = 0; i < state.numel(); ++i)
          static_cast<float*>(next.data())[i] = static_cast<const float*>(state.data())[i] + 1.0f;
        std::vector<int64_t> shape = {1, b};
        shape.insert(shape.end(), baseline_shape.begin() + 1, baseline_shape.end());
        Array baseline = Array::Zeros(DType::kFloat32, shape);
        Array action(DType::kInt64, {1, b});
        const auto* frames = static_cast<const uint8_t*>(in.at("observation").map().at("frame").leaf().data());
        const auto* ids = static_cast<const int32_t*>(in.at("observation").map().at("id").leaf().data());
        const int64_t per_caller = baseline.numel() / b;
        for (int64_t i = 0; i < b; ++i) {
          const uint8_t frame = frames[i * 6];
          static_cast<float*>(baseline.data())[i * per_caller] = 10.0f * frame + static_cast<float>(ids[i]) + 0.5f;
          static_cast<int64_t*>(action.data())[i] = frame + 1;
          if (frame == episode_length) {
            std::lock_guard<std::mutex> lock(mu_);
            final_calls_.push_back({ids[i], At<int32_t>(in, "episode_step", i), At<bool>(in, "done", i),
                                    At<bool>(in, "truncated", i), At<float>(in, "reward", i),
                                    At<float>(in, "episode_return", i), static_cast<const float*>(state.data())[i * 2],
                                    static_cast<const int64_t*>(in.at("last_action").leaf().data())[i]});
          }
        }
        batch->SetOutputs(ArrayNest(ArrayNest::Map{
            {baseline_key, baseline}, {"action", action}, {"agent_state", ArrayNest::Vector{next}}}));
      }
    } catch (const ClosedError&) {
    }
  }

  std::mutex mu_;
  std::vector<FinalCall> final_calls_ /* GUARDED_BY(mu_) */;
  std::thread thread_;  // Last: starts after the fields above exist.
};

EnvFactory Truncating(int32_t id, int32_t episode_length) {
  return [=]() -> std::unique_ptr<Env> {
    return std::make_unique<CountingEnv>(id, episode_length, /*truncate=*/true);
  };
}

TEST(ActorPoolTest, TruncatedStepsGetTheValueOfTheFinalObservation) {
  constexpr int64_t kUnroll = 4;
  constexpr int32_t kEpisode = 3;
  EnvServer a(Truncating(/*id=*/0, kEpisode), TempSocket("a"));
  EnvServer b(Truncating(/*id=*/1, kEpisode), TempSocket("b"));
  a.Start();
  b.Start();
  Fixture f;
  std::vector<ArrayNest> items;
  std::vector<TruncationModel::FinalCall> final_calls;
  {
    TruncationModel model(f.batcher.get(), kEpisode);
    ActorPool pool(kUnroll, f.learner_queue, f.batcher, {a.address(), b.address()}, InitialState());
    std::thread runner([&pool] { pool.Run(); });
    for (int i = 0; i < 12; ++i) items.push_back(f.learner_queue->DequeueMany());
    f.Close();
    runner.join();
    final_calls = model.final_calls();
  }

  std::map<int32_t, int> rollouts_per_env;
  int truncated_steps = 0;
  for (const ArrayNest& item : items) {
    const ArrayNest& rollout = item.map().at("rollout");
    const int32_t id = EnvId(rollout);
    const int k = rollouts_per_env[id]++;
    const Array& value = rollout.map().at("truncation_value").leaf();
    ASSERT_EQ(value.dtype(), DType::kFloat32);
    ASSERT_EQ(value.shape(), (std::vector<int64_t>{kUnroll + 1, 1}));
    const auto* values = static_cast<const float*>(value.data());
    const auto* done = static_cast<const bool*>(rollout.map().at("done").leaf().data());
    const auto* truncated = static_cast<const bool*>(rollout.map().at("truncated").leaf().data());
    for (int64_t t = 0; t <= kUnroll; ++t) {
      const int64_t global_step = static_cast<int64_t>(k) * kUnroll + t;
      const bool cut = global_step > 0 && global_step % kEpisode == 0;
      EXPECT_EQ(done[t], global_step % kEpisode == 0);
      EXPECT_EQ(truncated[t], cut);
      // The model's baseline for the final observation (frame == kEpisode) on cut steps only.
      EXPECT_EQ(values[t], cut ? 10.0f * kEpisode + static_cast<float>(id) + 0.5f : 0.0f)
          << "env " << id << " step " << global_step;
      if (cut && t > 0) ++truncated_steps;
    }
    // The extra calls' agent states were discarded: one increment per ordinary step.
    const float s = static_cast<const float*>(item.map().at("initial_agent_state").vector()[0].leaf().data())[0];
    EXPECT_EQ(s, static_cast<float>(k * kUnroll));
  }
  EXPECT_GE(truncated_steps, 8);

  // The extra calls saw the final observation with the cut episode's last transition:
  // actions 1, 2, 3 (frame + 1) gave rewards 2, 3, 4.
  ASSERT_GE(final_calls.size(), static_cast<std::size_t>(truncated_steps));
  for (const auto& call : final_calls) {
    EXPECT_FALSE(call.done);
    EXPECT_FALSE(call.truncated);
    EXPECT_EQ(call.episode_step, kEpisode);
    EXPECT_EQ(call.reward, 4.0f);
    EXPECT_EQ(call.episode_return, 9.0f);
    EXPECT_EQ(call.last_action, kEpisode);
    // The actor's current state: one increment per ordinary step of the stream so far.
    EXPECT_EQ(std::fmod(call.state, static_cast<float>(kEpisode)), 0.0f);
    EXPECT_GT(call.state, 0.0f);
  }
}

TEST(ActorPoolTest, TruncationValueCanBeTurnedOff) {
  EnvServer a(Truncating(/*id=*/0, /*episode_length=*/2), TempSocket("a"));
  a.Start();
  Fixture f;
  std::vector<TruncationModel::FinalCall> final_calls;
  {
    TruncationModel model(f.batcher.get(), /*episode_length=*/2);
    ActorPool pool(/*unroll_length=*/3, f.learner_queue, f.batcher, {a.address()}, InitialState(),
                   /*initial_action=*/std::nullopt, /*truncation_value_key=*/std::nullopt);
    std::thread runner([&pool] { pool.Run(); });
    for (int i = 0; i < 3; ++i) {
      const ArrayNest item = f.learner_queue->DequeueMany();
      EXPECT_EQ(item.map().at("rollout").map().count("truncation_value"), 0u);
    }
    f.Close();
    runner.join();
    final_calls = model.final_calls();
  }
  EXPECT_TRUE(final_calls.empty());  // No extra calls.
}

// Runs a pool over one truncating env and returns the message Run() threw (InvalidArgument).
std::string TruncationError(const std::string& baseline_key, std::vector<int64_t> baseline_shape,
                            std::optional<std::string> truncation_value_key = "baseline") {
  EnvServer a(Truncating(/*id=*/0, /*episode_length=*/2), TempSocket("a"));
  a.Start();
  Fixture f;
  TruncationModel model(f.batcher.get(), /*episode_length=*/2, baseline_key, std::move(baseline_shape));
  std::thread learner([&f] {
    try {
      for (;;) f.learner_queue->DequeueMany();
    } catch (const ClosedError&) {
    }
  });
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {a.address()}, InitialState(),
                 /*initial_action=*/std::nullopt, std::move(truncation_value_key));
  std::string message = "no error";
  try {
    pool.Run();
  } catch (const InvalidArgument& e) {
    message = e.what();
  }
  f.Close();
  learner.join();
  return message;
}

TEST(ActorPoolTest, BadTruncationValueOutputsAreRethrownByRun) {
  EXPECT_NE(TruncationError("value", {1}).find("truncation_value_key 'baseline' is not among"), std::string::npos);
  EXPECT_NE(TruncationError("baseline", {1, 2})
                .find("float32 with one value per actor ([1, 1]), got float32 [1, 1, 2]"),
            std::string::npos);
  EXPECT_NE(TruncationError("truncation_value", {1}, /*truncation_value_key=*/"truncation_value")
                .find("'truncation_value' has the name of the rollout entry"),
            std::string::npos);
}

TEST(ActorPoolTest, EnvErrorIsRethrownByRun) {
  EnvServer a(Counting(/*id=*/0, /*episode_length=*/100, /*fail_at_step=*/5), TempSocket("a"));
  a.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  std::thread learner([&f] {
    try {
      for (;;) f.learner_queue->DequeueMany();
    } catch (const ClosedError&) {
    }
  });
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {a.address()}, InitialState());
  try {
    pool.Run();
    FAIL() << "expected EnvError";
  } catch (const EnvError& e) {
    EXPECT_NE(std::string(e.what()).find("failing as asked"), std::string::npos);
  }
  f.Close();
  model.join();
  learner.join();
}

TEST(ActorPoolTest, BadModelOutputIsRethrownByRun) {
  EnvServer a(Counting(/*id=*/0, /*episode_length=*/100), TempSocket("a"));
  a.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), /*with_action=*/false);
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {a.address()}, InitialState());
  EXPECT_THROW(pool.Run(), InvalidArgument);
  f.Close();
  model.join();
}

TEST(ActorPoolTest, SurvivesAServerThatGoesAway) {
  const std::string address_a = TempSocket("a");
  auto a = std::make_unique<EnvServer>(Counting(/*id=*/0, /*episode_length=*/1000), address_a);
  EnvServer b(Counting(/*id=*/1, /*episode_length=*/1000), TempSocket("b"));
  a->Start();
  b.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {address_a, b.address()}, InitialState());
  std::thread runner([&pool] { pool.Run(); });

  auto count_ids = [&f](int n) {
    std::map<int32_t, int> ids;
    for (int i = 0; i < n; ++i) ++ids[EnvId(f.learner_queue->DequeueMany().map().at("rollout"))];
    return ids;
  };
  // Dequeues rollouts until one from env `id` arrives; false after 10 s without one. B's actor
  // keeps the queue busy meanwhile, so this never blocks for long.
  auto rollout_from = [&f](int32_t id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (EnvId(f.learner_queue->DequeueMany().map().at("rollout")) == id) return true;
    }
    return false;
  };
  // Both actors stream before A goes away. Waiting for it, not counting a fixed number of
  // rollouts: under load A's actor has needed a retry first (a GOAWAY on its first stream),
  // and B's fast actor filled the first 20 rollouts during A's backoff.
  EXPECT_TRUE(rollout_from(0));
  a->Stop();
  a.reset();
  auto during = count_ids(40);
  EXPECT_GT(during[1], 30);  // The other actor went on (a few of A's rollouts may be queued).
  a = std::make_unique<EnvServer>(Counting(/*id=*/0, /*episode_length=*/1000), address_a);
  a->Start();
  EXPECT_TRUE(rollout_from(0));  // A's actor reconnects after its backoff.
  f.Close();
  runner.join();
  model.join();
}

TEST(ActorPoolTest, StopWithoutServers) {
  Fixture f;
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {TempSocket("nobody")}, InitialState());
  std::thread stopper([&pool] {
    std::this_thread::sleep_for(milliseconds(200));
    pool.Stop();
  });
  pool.Run();  // Retries until stopped, then returns normally.
  stopper.join();
  EXPECT_EQ(pool.count(), 0);
}

TEST(ActorPoolTest, InvalidArguments) {
  Fixture f;
  EXPECT_THROW(ActorPool(/*unroll_length=*/0, f.learner_queue, f.batcher, {"unix:/x"}, InitialState()),
               InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {}, InitialState()), InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {"unix:/x"},
                         ArrayNest(Array::Zeros(DType::kFloat32, {1, 3}))),
               InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, nullptr, f.batcher, {"unix:/x"}, InitialState()), InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {"unix:/x"}, InitialState(),
                         /*initial_action=*/std::nullopt, /*truncation_value_key=*/""),
               InvalidArgument);
}

}  // namespace
}  // namespace torchbeast
