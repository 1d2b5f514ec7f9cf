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

// A scripted step stream. Observations {"frame": uint8 [2, 3] filled with the episode step,
// "id": int32 [] env id}; reward 1 per step plus the action's int64 value. Each episode ends
// after `episode_length` steps, terminated or, with `truncate`, truncated (then the record
// carries the final observation, frame = episode_length); the ending step's record has the new
// episode's first observation. Throws EnvError at global step `fail_at_step`.
class CountingEnv : public Env {
 public:
  CountingEnv(int32_t id, int32_t episode_length, bool truncate = false, int64_t fail_at_step = -1)
      : id_(id), episode_length_(episode_length), truncate_(truncate), fail_at_step_(fail_at_step) {}

  EnvStep Initial() override {
    step_ = 0;
    return_ = 0.0f;
    EnvStep first;
    first.observation = Observation();
    first.done = true;
    return first;
  }

  EnvStep Step(const ArrayNest& action) override {
    if (total_steps_++ == fail_at_step_) {
      throw EnvError("CountingEnv: failing as asked at step " + std::to_string(fail_at_step_));
    }
    EnvStep out;
    out.reward = 1.0f + static_cast<float>(*static_cast<const int64_t*>(action.leaf().data()));
    return_ += out.reward;
    out.episode_step = ++step_;
    out.episode_return = return_;
    out.observation = Observation();
    if (step_ < episode_length_) return out;
    out.done = true;
    if (truncate_) {
      out.truncated = true;
      out.final_observation = std::move(out.observation);
    }
    step_ = 0;
    return_ = 0.0f;
    out.observation = Observation();
    return out;
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
  int32_t step_ = 0;  // In the current episode.
  float return_ = 0.0f;
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
