#include "core/actor_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
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

// How often `part` occurs in `text`.
int Count(const std::string& text, const std::string& part) {
  int n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
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
    for (const char* key :
         {"reward", "done", "truncated", "episode_step", "episode_return", "last_action", "action", "baseline"}) {
      EXPECT_EQ(m.at(key).leaf().shape(), (std::vector<int64_t>{kUnroll + 1, 1})) << key;
    }
    EXPECT_EQ(m.count("agent_state"), 0u);
    EXPECT_EQ(m.count("final_observation"), 0u);
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
        const auto* prev_frame =
            static_cast<const uint8_t*>(prev.map().at("observation").map().at("frame").leaf().data());
        EXPECT_EQ(prev_frame[kUnroll * 6], frame[0]);
      }
    }
  }
}

// A model for truncating CountingEnvs: action = frame + 1, baseline = 10 * frame + id + 0.5,
// truncation_value = 10 * frame + id of "final_observation" (0 for zeros), agent_state + 1.
// Records what every call received.
class TruncationModel {
 public:
  struct Call {
    std::vector<std::string> keys;  // The input keys.
    bool truncated;
    int32_t id;
    std::vector<int64_t> final_frame_shape, final_id_shape;
    DType final_frame_dtype, final_id_dtype;
    std::vector<uint8_t> final_frame;  // The caller's 6 elements.
    int32_t final_id;
  };

  explicit TruncationModel(DynamicBatcher* batcher) : thread_([this, batcher] { Loop(batcher); }) {}
  ~TruncationModel() { thread_.join(); }

  std::vector<Call> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  void Loop(DynamicBatcher* batcher) {
    try {
      for (;;) {
        auto batch = batcher->GetBatch();
        const int64_t b = batch->batch_size();
        const ArrayNest::Map& in = batch->inputs().map();
        const Array& state = in.at("agent_state").vector()[0].leaf();
        Array next(DType::kFloat32, state.shape());
        for (int64_t i = 0; i < state.numel(); ++i)
          static_cast<float*>(next.data())[i] = static_cast<const float*>(state.data())[i] + 1.0f;
        Array baseline(DType::kFloat32, {1, b}), truncation_value(DType::kFloat32, {1, b}),
            action(DType::kInt64, {1, b});
        const auto* frames = static_cast<const uint8_t*>(in.at("observation").map().at("frame").leaf().data());
        const auto* ids = static_cast<const int32_t*>(in.at("observation").map().at("id").leaf().data());
        const Array& final_frame = in.at("final_observation").map().at("frame").leaf();
        const Array& final_id = in.at("final_observation").map().at("id").leaf();
        const auto* final_frames = static_cast<const uint8_t*>(final_frame.data());
        const auto* final_ids = static_cast<const int32_t*>(final_id.data());
        const auto* truncated = static_cast<const bool*>(in.at("truncated").leaf().data());
        for (int64_t i = 0; i < b; ++i) {
          static_cast<float*>(baseline.data())[i] = 10.0f * frames[i * 6] + static_cast<float>(ids[i]) + 0.5f;
          static_cast<float*>(truncation_value.data())[i] =
              10.0f * final_frames[i * 6] + static_cast<float>(final_ids[i]);
          static_cast<int64_t*>(action.data())[i] = frames[i * 6] + 1;
          Call call{{},
                    truncated[i],
                    ids[i],
                    final_frame.shape(),
                    final_id.shape(),
                    final_frame.dtype(),
                    final_id.dtype(),
                    std::vector<uint8_t>(final_frames + i * 6, final_frames + i * 6 + 6),
                    final_ids[i]};
          for (const auto& entry : in) call.keys.push_back(entry.first);
          std::lock_guard<std::mutex> lock(mu_);
          calls_.push_back(std::move(call));
        }
        batch->SetOutputs(ArrayNest(ArrayNest::Map{{"baseline", baseline},
                                                   {"truncation_value", truncation_value},
                                                   {"action", action},
                                                   {"agent_state", ArrayNest::Vector{next}}}));
      }
    } catch (const ClosedError&) {
    }
  }

  std::mutex mu_;
  std::vector<Call> calls_ /* GUARDED_BY(mu_) */;
  std::thread thread_;  // Last: starts after the fields above exist.
};

EnvFactory Truncating(int32_t id, int32_t episode_length) {
  return [=]() -> std::unique_ptr<Env> { return std::make_unique<CountingEnv>(id, episode_length, /*truncate=*/true); };
}

std::vector<std::string> Sorted(std::vector<std::string> keys) {
  std::sort(keys.begin(), keys.end());
  return keys;
}

template <std::size_t N>
std::vector<std::string> Keys(const std::array<const char*, N>& keys, std::vector<std::string> more = {}) {
  more.insert(more.end(), keys.begin(), keys.end());
  return Sorted(std::move(more));
}

TEST(ActorPoolTest, TheModelGetsTheFinalObservationOnTruncatedStepsAndZerosOtherwise) {
  constexpr int64_t kUnroll = 4;
  constexpr int32_t kEpisode = 3;
  EnvServer a(Truncating(/*id=*/1, kEpisode), TempSocket("a"));
  EnvServer b(Truncating(/*id=*/2, kEpisode), TempSocket("b"));
  a.Start();
  b.Start();
  Fixture f;
  std::vector<TruncationModel::Call> calls;
  {
    TruncationModel model(f.batcher.get());
    ActorPool pool(kUnroll, f.learner_queue, f.batcher, {a.address(), b.address()}, InitialState());
    std::thread runner([&pool] { pool.Run(); });
    for (int i = 0; i < 6; ++i) f.learner_queue->DequeueMany();
    f.Close();
    runner.join();
    calls = model.calls();
  }
  int truncated_calls = 0;
  for (const auto& call : calls) {
    EXPECT_EQ(Sorted(call.keys), Keys(ActorPool::kStepInputKeys));
    // The observation's structure, shapes and dtypes, with the leading [1, B].
    ASSERT_EQ(call.final_frame_shape.size(), 4u);
    EXPECT_EQ(call.final_frame_shape[0], 1);
    EXPECT_EQ(std::vector<int64_t>(call.final_frame_shape.begin() + 2, call.final_frame_shape.end()),
              (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(call.final_frame_dtype, DType::kUInt8);
    EXPECT_EQ(call.final_id_shape.size(), 2u);
    EXPECT_EQ(call.final_id_dtype, DType::kInt32);
    // The cut episode's last observation (frame = kEpisode) on truncated steps, zeros otherwise.
    const uint8_t frame = call.truncated ? kEpisode : 0;
    EXPECT_EQ(call.final_frame, std::vector<uint8_t>(6, frame)) << "truncated " << call.truncated;
    EXPECT_EQ(call.final_id, call.truncated ? call.id : 0);
    truncated_calls += call.truncated;
  }
  EXPECT_GE(truncated_calls, 4);
  EXPECT_GT(static_cast<int>(calls.size()), 2 * truncated_calls);
}

TEST(ActorPoolTest, RolloutsKeepTheTruncationValueOutputBesideItsStepButNotTheFinalObservation) {
  constexpr int64_t kUnroll = 4;
  constexpr int32_t kEpisode = 3;
  EnvServer a(Truncating(/*id=*/1, kEpisode), TempSocket("a"));
  EnvServer b(Truncating(/*id=*/2, kEpisode), TempSocket("b"));
  a.Start();
  b.Start();
  Fixture f;
  std::vector<ArrayNest> items;
  {
    TruncationModel model(f.batcher.get());
    ActorPool pool(kUnroll, f.learner_queue, f.batcher, {a.address(), b.address()}, InitialState());
    std::thread runner([&pool] { pool.Run(); });
    for (int i = 0; i < 12; ++i) items.push_back(f.learner_queue->DequeueMany());
    f.Close();
    runner.join();
  }

  std::map<int32_t, int> rollouts_per_env;
  int truncated_steps = 0;
  for (const ArrayNest& item : items) {
    const ArrayNest::Map& rollout = item.map().at("rollout").map();
    std::vector<std::string> keys;
    for (const auto& entry : rollout) keys.push_back(entry.first);
    EXPECT_EQ(keys, Keys(ActorPool::kRolloutStepKeys, {"action", "baseline", "truncation_value"}));
    const int32_t id = EnvId(item.map().at("rollout"));
    const int k = rollouts_per_env[id]++;
    const Array& value = rollout.at("truncation_value").leaf();
    ASSERT_EQ(value.dtype(), DType::kFloat32);
    ASSERT_EQ(value.shape(), (std::vector<int64_t>{kUnroll + 1, 1}));
    const auto* values = static_cast<const float*>(value.data());
    const auto* baselines = static_cast<const float*>(rollout.at("baseline").leaf().data());
    const auto* done = static_cast<const bool*>(rollout.at("done").leaf().data());
    const auto* truncated = static_cast<const bool*>(rollout.at("truncated").leaf().data());
    const auto* frames = static_cast<const uint8_t*>(rollout.at("observation").map().at("frame").leaf().data());
    for (int64_t t = 0; t <= kUnroll; ++t) {
      const int64_t global_step = static_cast<int64_t>(k) * kUnroll + t;
      const bool cut = global_step > 0 && global_step % kEpisode == 0;
      EXPECT_EQ(done[t], global_step % kEpisode == 0);
      EXPECT_EQ(truncated[t], cut);
      // The model's value of the final observation (frame kEpisode), on the cut step itself.
      EXPECT_EQ(values[t], cut ? 10.0f * kEpisode + static_cast<float>(id) : 0.0f)
          << "env " << id << " step " << global_step;
      EXPECT_EQ(baselines[t], 10.0f * frames[t * 6] + static_cast<float>(id) + 0.5f);
      if (cut && t > 0) ++truncated_steps;
    }
    // One Compute() call per step: the state went up by one per step.
    const float s = static_cast<const float*>(item.map().at("initial_agent_state").vector()[0].leaf().data())[0];
    EXPECT_EQ(s, static_cast<float>(k * kUnroll));
  }
  EXPECT_GE(truncated_steps, 8);
}

// A CountingEnv whose steps from global step `from_step` on are changed by `corrupt`, and
// whose Step() waits `delay` from then on (for deadlines).
class CorruptingEnv : public CountingEnv {
 public:
  CorruptingEnv(int32_t id, int64_t from_step, std::function<void(EnvStep*)> corrupt,
                milliseconds delay = milliseconds(0))
      : CountingEnv(id, /*episode_length=*/1000), from_step_(from_step), corrupt_(std::move(corrupt)), delay_(delay) {}
  EnvStep Initial() override {
    EnvStep step = CountingEnv::Initial();
    if (from_step_ == 0) Corrupt(&step);
    return step;
  }
  EnvStep Step(const ArrayNest& action) override {
    EnvStep step = CountingEnv::Step(action);
    if (++steps_ >= from_step_) Corrupt(&step);
    return step;
  }

 private:
  void Corrupt(EnvStep* step) {
    if (corrupt_) corrupt_(step);
    std::this_thread::sleep_for(delay_);
  }
  const int64_t from_step_;
  const std::function<void(EnvStep*)> corrupt_;
  const milliseconds delay_;
  int64_t steps_ = 0;
};

EnvFactory Corrupting(int32_t id, int64_t from_step, std::function<void(EnvStep*)> corrupt,
                      milliseconds delay = milliseconds(0)) {
  return [=]() -> std::unique_ptr<Env> { return std::make_unique<CorruptingEnv>(id, from_step, corrupt, delay); };
}

// The observation spec of CountingEnv.
ArrayNest CountingSpec() {
  return ArrayNest(
      ArrayNest::Map{{"frame", Array::Zeros(DType::kUInt8, {2, 3})}, {"id", Array::Zeros(DType::kInt32, {})}});
}

// Runs a pool over a good server (env id 0) and a bad one (env id 1, made by `bad`) until
// `rollouts` rollouts arrived; returns the log and checks that every rollout came from the good
// server, that Run() returned normally and that the bad server was dropped at least once.
std::string RunBesideABadServer(EnvFactory bad, std::optional<ArrayNest> spec, int rollouts = 30,
                                milliseconds env_timeout = milliseconds(0)) {
  EnvServer good(Counting(/*id=*/0, /*episode_length=*/5), TempSocket("good"));
  EnvServer bad_server(std::move(bad), TempSocket("bad"));
  good.Start();
  bad_server.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ::testing::internal::CaptureStderr();
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {good.address(), bad_server.address()},
                 InitialState(), /*initial_action=*/std::nullopt, std::move(spec), env_timeout);
  std::exception_ptr error;
  std::thread runner([&pool, &error] {
    try {
      pool.Run();
    } catch (...) {
      error = std::current_exception();
    }
  });
  int from_good = 0;
  for (int i = 0; i < rollouts; ++i) from_good += EnvId(f.learner_queue->DequeueMany().map().at("rollout")) == 0;
  // Until the bad server has been dropped (it may take a few steps or a deadline).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (pool.status()[1].drops == 0 && std::chrono::steady_clock::now() < deadline) {
    f.learner_queue->DequeueMany();
  }
  const std::vector<ActorPool::ActorStatus> status = pool.status();
  f.Close();
  runner.join();
  model.join();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(error) << "Run() raised";
  EXPECT_GE(from_good, rollouts - 2) << log;  // A bad stream never delivers past its first bad step.
  EXPECT_EQ(status[0].drops, 0) << log;
  EXPECT_TRUE(status[0].ever_connected);
  EXPECT_GE(status[1].drops, 1) << log;
  EXPECT_NE(status[1].last_problem, "");
  EXPECT_NE(log.find("actor 1 (" + bad_server.address() + "): dropped: "), std::string::npos) << log;
  EXPECT_EQ(log.find("actor 0 (" + good.address() + "): dropped"), std::string::npos) << log;
  return log;
}

TEST(ActorPoolTest, AShapeChangeDropsOnlyThatServer) {
  const std::string log =
      RunBesideABadServer(Corrupting(/*id=*/1, /*from_step=*/3,
                                     [](EnvStep* step) {
                                       step->observation.map().at("frame") = Array::Zeros(DType::kUInt8, {2, 4});
                                     }),
                          CountingSpec());
  EXPECT_NE(log.find("dropped: observation 'frame' has shape [2, 4], expected [2, 3]; retrying in "), std::string::npos)
      << log;
}

TEST(ActorPoolTest, AServerThatGoesBadAfterDeliveringIsRetriedLessAndLessOften) {
  // Bad from its 8th step on: each stream delivers rollouts (unroll length 2) before it is dropped,
  // which must not reset the drop backoff (waits drawn from [b/2, b], b = 50, 100, 200, 400 ms).
  EnvServer good(Counting(/*id=*/0, /*episode_length=*/5), TempSocket("good"));
  EnvServer bad(Corrupting(/*id=*/1, /*from_step=*/8,
                           [](EnvStep* step) {
                             step->observation.map().at("frame") = Array::Zeros(DType::kUInt8, {2, 4});
                           }),
                TempSocket("bad"));
  good.Start();
  bad.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ::testing::internal::CaptureStderr();
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {good.address(), bad.address()}, InitialState(),
                 /*initial_action=*/std::nullopt, CountingSpec());
  std::thread runner([&pool] { pool.Run(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (pool.status()[1].drops < 4 && std::chrono::steady_clock::now() < deadline) f.learner_queue->DequeueMany();
  const int64_t drops = pool.status()[1].drops;
  f.Close();
  runner.join();
  model.join();
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_GE(drops, 4) << log;
  std::vector<int64_t> waits;
  const std::regex retry("actor 1 \\([^)]*\\): dropped: [^\\n]*; retrying in (\\d+) ms");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), retry); it != std::sregex_iterator(); ++it) {
    waits.push_back(std::stoll((*it)[1]));
  }
  ASSERT_GE(waits.size(), 4u) << log;
  EXPECT_LE(waits[0], 50) << log;
  EXPECT_GE(waits[3], 200) << log;  // 400 ms drawn from [200, 400]; without the rule: <= 50.
}

TEST(ActorPoolTest, AFirstStepUnlikeTheSpecIsDropped) {
  const std::string log =
      RunBesideABadServer(Corrupting(/*id=*/1, /*from_step=*/0,
                                     [](EnvStep* step) {
                                       step->observation.map().at("frame") = Array::Zeros(DType::kFloat32, {2, 3});
                                     }),
                          CountingSpec());
  EXPECT_NE(log.find("dropped: observation 'frame' has dtype float32, expected uint8"), std::string::npos) << log;
}

TEST(ActorPoolTest, AnExtraKeyIsDroppedWithoutASpecToo) {
  // Without a spec, the first observation (the good server's or the bad one's: both are good
  // at first) becomes it.
  const std::string log = RunBesideABadServer(
      Corrupting(/*id=*/1, /*from_step=*/3,
                 [](EnvStep* step) { step->observation.map().emplace("extra", Array::Zeros(DType::kUInt8, {1})); }),
      /*spec=*/std::nullopt);
  EXPECT_NE(log.find("dropped: observation has an unexpected key 'extra'"), std::string::npos) << log;
}

TEST(ActorPoolTest, AFinalObservationUnlikeTheSpecIsDropped) {
  const std::string log = RunBesideABadServer(
      Corrupting(/*id=*/1, /*from_step=*/2,
                 [](EnvStep* step) {
                   step->done = step->truncated = true;
                   step->final_observation = ArrayNest(ArrayNest::Map{{"frame", Array::Zeros(DType::kUInt8, {3, 2})},
                                                                      {"id", Array::Zeros(DType::kInt32, {})}});
                 }),
      CountingSpec());
  EXPECT_NE(log.find("dropped: final_observation 'frame' has shape [3, 2], expected [2, 3]"), std::string::npos) << log;
}

TEST(ActorPoolTest, ANanRewardIsDropped) {
  const std::string log = RunBesideABadServer(
      Corrupting(/*id=*/1, /*from_step=*/4, [](EnvStep* step) { step->reward = std::nanf(""); }), CountingSpec());
  EXPECT_NE(log.find("dropped: reward is nan"), std::string::npos) << log;
}

TEST(ActorPoolTest, AMessageOverTheLimitIsDropped) {
  // The limit is 8 x the spec's 10 bytes + 1 MiB: a 4 MiB frame is over it.
  const std::string log =
      RunBesideABadServer(Corrupting(/*id=*/1, /*from_step=*/2,
                                     [](EnvStep* step) {
                                       step->observation.map().at("frame") = Array::Zeros(DType::kUInt8, {2048, 2048});
                                     }),
                          CountingSpec());
  EXPECT_NE(log.find("dropped: gRPC status RESOURCE_EXHAUSTED: "), std::string::npos) << log;
}

TEST(ActorPoolTest, AServerPastTheDeadlineIsDropped) {
  const auto start = std::chrono::steady_clock::now();
  const std::string log = RunBesideABadServer(
      Corrupting(/*id=*/1, /*from_step=*/3, /*corrupt=*/nullptr, /*delay=*/milliseconds(1500)), CountingSpec(),
      /*rollouts=*/10, /*env_timeout=*/milliseconds(300));
  EXPECT_NE(log.find("dropped: sent no step within 0.3"), std::string::npos) << log;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(ActorPoolTest, ASilentFirstStepIsDropped) {
  const std::string log = RunBesideABadServer(
      Corrupting(/*id=*/1, /*from_step=*/0, /*corrupt=*/nullptr, /*delay=*/milliseconds(1500)), CountingSpec(),
      /*rollouts=*/10, /*env_timeout=*/milliseconds(300));
  EXPECT_NE(log.find("dropped: sent no step within 0.3"), std::string::npos) << log;
}

TEST(ActorPoolTest, StatusTellsWhoIsConnected) {
  EnvServer a(Counting(/*id=*/0, /*episode_length=*/5), TempSocket("a"));
  a.Start();
  const std::string nobody = TempSocket("nobody");
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ::testing::internal::CaptureStderr();
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {a.address(), nobody}, InitialState());
  EXPECT_EQ(pool.num_connected(), 0);
  std::thread runner([&pool] { pool.Run(); });
  f.learner_queue->DequeueMany();
  const auto status = pool.status();
  EXPECT_EQ(pool.num_connected(), 1);
  ASSERT_EQ(status.size(), 2u);
  EXPECT_EQ(status[0].address, a.address());
  EXPECT_TRUE(status[0].connected && status[0].ever_connected);
  ASSERT_TRUE(status[0].seconds_since_last_step.has_value());
  EXPECT_LT(*status[0].seconds_since_last_step, 5.0);
  EXPECT_EQ(status[1].address, nobody);
  EXPECT_FALSE(status[1].connected || status[1].ever_connected);
  EXPECT_FALSE(status[1].seconds_since_last_step.has_value());
  EXPECT_NE(status[1].last_problem, "");
  f.Close();
  runner.join();
  model.join();
  ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(pool.num_connected(), 0);
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
  ::testing::internal::CaptureStderr();
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
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_GE(Count(log, "; reconnecting in "), 1) << log;
  EXPECT_GE(Count(log, "actor 0: reconnected to " + address_a), 1) << log;
}

TEST(ActorPoolTest, StopWithoutServers) {
  Fixture f;
  const std::string address = TempSocket("nobody");
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {address}, InitialState());
  std::thread stopper([&pool] {
    std::this_thread::sleep_for(milliseconds(500));  // Several retries (50, 100, 200 ms, ...).
    pool.Stop();
  });
  ::testing::internal::CaptureStderr();
  pool.Run();  // Retries until stopped, then returns normally.
  const std::string log = ::testing::internal::GetCapturedStderr();
  stopper.join();
  EXPECT_EQ(pool.count(), 0);
  // Said once, not at every retry.
  EXPECT_EQ(Count(log, "actor 0: waiting for env server " + address + " (not reachable yet: "), 1) << log;
  EXPECT_EQ(Count(log, "reconnect"), 0) << log;
}

TEST(ActorPoolTest, WaitsForAServerThatStartsLate) {
  const std::string address = TempSocket("late");
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, {address}, InitialState());
  ::testing::internal::CaptureStderr();
  std::thread runner([&pool] { pool.Run(); });
  std::this_thread::sleep_for(milliseconds(400));
  EnvServer server(Counting(/*id=*/0, /*episode_length=*/1000), address);
  server.Start();
  EXPECT_EQ(EnvId(f.learner_queue->DequeueMany().map().at("rollout")), 0);
  f.Close();
  runner.join();
  model.join();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(Count(log, "waiting for env server"), 1) << log;
  EXPECT_EQ(Count(log, "reconnect"), 0) << log;
}

TEST(ActorPoolTest, ServersAddedAndRemovedWhileRunning) {
  EnvServer a(Counting(/*id=*/0, /*episode_length=*/1000), TempSocket("a"));
  EnvServer b(Counting(/*id=*/1, /*episode_length=*/1000), TempSocket("b"));
  a.Start();
  b.Start();
  Fixture f;
  std::thread model(Model, f.batcher.get(), true);
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, /*env_server_addresses=*/{}, InitialState());
  std::thread runner([&pool] { pool.Run(); });
  EXPECT_EQ(pool.AddServer(a.address()), 0);
  EXPECT_EQ(pool.AddServer(a.address()), -1);  // One actor per address.
  EXPECT_EQ(EnvId(f.learner_queue->DequeueMany().map().at("rollout")), 0);
  EXPECT_EQ(pool.AddServer(b.address()), 1);
  // Dequeues rollouts until one from env `id` arrives; false after 10 s without one.
  auto rollout_from = [&f](int32_t id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (EnvId(f.learner_queue->DequeueMany().map().at("rollout")) == id) return true;
    }
    return false;
  };
  EXPECT_TRUE(rollout_from(1));
  EXPECT_TRUE(pool.RemoveServer(a.address()));
  EXPECT_FALSE(pool.RemoveServer(a.address()));
  for (int i = 0; i < 4; ++i) f.learner_queue->DequeueMany();  // Rollouts A queued before its removal.
  std::map<int32_t, int> ids;
  for (int i = 0; i < 20; ++i) ++ids[EnvId(f.learner_queue->DequeueMany().map().at("rollout"))];
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 20);
  const auto status = pool.status();
  ASSERT_EQ(status.size(), 1u);
  EXPECT_EQ(status[0].index, 1);
  EXPECT_EQ(status[0].address, b.address());
  EXPECT_GT(status[0].steps, 40);
  EXPECT_EQ(pool.AddServer(a.address()), 2);  // A rejoins as a new actor.
  EXPECT_TRUE(rollout_from(0));
  f.Close();
  runner.join();
  model.join();
  EXPECT_EQ(pool.AddServer(a.address() + "x"), -1);  // Stopped.
}

TEST(ActorPoolTest, RunWithoutServersWaitsForStop) {
  Fixture f;
  ActorPool pool(/*unroll_length=*/2, f.learner_queue, f.batcher, /*env_server_addresses=*/{}, InitialState());
  std::thread stopper([&pool] {
    std::this_thread::sleep_for(milliseconds(200));
    pool.Stop();
  });
  pool.Run();
  stopper.join();
  EXPECT_TRUE(pool.status().empty());
}

TEST(ActorPoolTest, InvalidArguments) {
  Fixture f;
  EXPECT_THROW(ActorPool(/*unroll_length=*/0, f.learner_queue, f.batcher, {"unix:/x"}, InitialState()),
               InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {""}, InitialState()), InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {"unix:/x"},
                         ArrayNest(Array::Zeros(DType::kFloat32, {1, 3}))),
               InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, nullptr, f.batcher, {"unix:/x"}, InitialState()), InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {"unix:/x"}, InitialState(),
                         /*initial_action=*/ArrayNest(Array::Zeros(DType::kInt64, {1}))),
               InvalidArgument);
  EXPECT_THROW(ActorPool(/*unroll_length=*/2, f.learner_queue, f.batcher, {"unix:/x"}, InitialState(),
                         /*initial_action=*/std::nullopt, /*observation_spec=*/std::nullopt,
                         /*env_timeout=*/milliseconds(-1)),
               InvalidArgument);
}

}  // namespace
}  // namespace torchbeast
