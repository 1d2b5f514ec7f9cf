// Helpers shared by the env server and actor pool tests: a fake env and temporary addresses.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "core/env.h"

namespace torchbeast {
namespace testing {

// Observations {"frame": uint8 [2, 3] filled with the episode step, "id": int32 [] env id}.
// Reward 1 per step (the action's int64 value is added). Terminates after `episode_length`
// steps, or truncates there with `truncate`. Throws EnvError at global step `fail_at_step`.
class CountingEnv : public Env {
 public:
  CountingEnv(int32_t id, int32_t episode_length, bool truncate = false, int64_t fail_at_step = -1)
      : id_(id), episode_length_(episode_length), truncate_(truncate), fail_at_step_(fail_at_step) {}

  ArrayNest Reset() override {
    step_ = 0;
    return Observation();
  }

  EnvResult Step(const ArrayNest& action) override {
    if (total_steps_++ == fail_at_step_) throw EnvError("CountingEnv: failing as asked at step " + std::to_string(fail_at_step_));
    ++step_;
    EnvResult result;
    result.observation = Observation();
    result.reward = 1.0 + static_cast<double>(*static_cast<const int64_t*>(action.leaf().data()));
    if (step_ >= episode_length_) (truncate_ ? result.truncated : result.terminated) = true;
    return result;
  }

 private:
  ArrayNest Observation() const {
    Array frame = Array::Zeros(DType::kUInt8, {2, 3});
    for (int i = 0; i < 6; ++i) static_cast<uint8_t*>(frame.data())[i] = static_cast<uint8_t>(step_);
    return ArrayNest(ArrayNest::Map{{"frame", frame}, {"id", Array::Scalar<int32_t>(DType::kInt32, id_)}});
  }

  const int32_t id_;
  const int32_t episode_length_;
  const bool truncate_;
  const int64_t fail_at_step_;
  int32_t step_ = 0;
  int64_t total_steps_ = 0;
};

// "unix:<fresh temporary directory>/<name>".
inline std::string TempSocket(const std::string& name) {
  char dir[] = "/tmp/ltb_test_XXXXXX";
  if (mkdtemp(dir) == nullptr) throw std::runtime_error("mkdtemp failed");
  return std::string("unix:") + dir + "/" + name;
}

// int64 [] action.
inline ArrayNest Action(int64_t value) { return ArrayNest(Array::Scalar<int64_t>(DType::kInt64, value)); }

inline uint8_t FrameValue(const EnvStep& step) {
  return static_cast<const uint8_t*>(step.observation.map().at("frame").leaf().data())[0];
}

}  // namespace testing
}  // namespace torchbeast
