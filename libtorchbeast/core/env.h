// The environment interface served by EnvServer, and the step record streamed to actors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "core/array.h"

namespace torchbeast {

// What Env::Step returns (Gymnasium-style, without info).
struct EnvResult {
  ArrayNest observation{ArrayNest::Vector{}};
  double reward = 0.0;
  bool terminated = false;  // The episode ended (no bootstrapping past it).
  bool truncated = false;   // The episode was cut off, e.g. by a time limit.
};

// One environment instance, used by one stream at a time. Implementations throw EnvError (or
// any std::exception) when the environment fails; the message reaches the client.
class Env {
 public:
  virtual ~Env() = default;
  // Starts an episode and returns its first observation.
  virtual ArrayNest Reset() = 0;
  virtual EnvResult Step(const ArrayNest& action) = 0;
};

using EnvFactory = std::function<std::unique_ptr<Env>()>;

// What an actor receives for every step (the Step message of rpcenv.proto, see there).
struct EnvStep {
  ArrayNest observation{ArrayNest::Vector{}};
  float reward = 0.0f;
  bool done = false;       // True on the first step of every episode (after a reset).
  bool truncated = false;  // With done: the previous episode was truncated, not terminated.
  int32_t episode_step = 0;
  float episode_return = 0.0f;
  // Only with truncated: the cut episode's true final observation (observation is the new
  // episode's first one).
  std::optional<ArrayNest> final_observation;
};

}  // namespace torchbeast
