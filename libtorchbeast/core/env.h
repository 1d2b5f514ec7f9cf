// The environment interface served by EnvServer: a stream of step records.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "core/array.h"

namespace torchbeast {

// One step record: the Step message of rpcenv.proto (see there for each field's meaning).
struct EnvStep {
  ArrayNest observation{ArrayNest::Vector{}};
  float reward = 0.0f;
  bool done = false;
  bool truncated = false;
  int32_t episode_step = 0;
  float episode_return = 0.0f;
  std::optional<ArrayNest> final_observation;
};

// One stream of steps across episodes, used by one server stream at a time. The
// implementation does the episode bookkeeping (auto-reset, counters, final observations; see
// torchbeast/core/episodes.py); the server only transports its records. Implementations throw
// EnvError (or any std::exception) when the environment fails; the message reaches the client.
class Env {
 public:
  virtual ~Env() = default;
  // The stream's first step.
  virtual EnvStep Initial() = 0;
  // The step that `action` leads to.
  virtual EnvStep Step(const ArrayNest& action) = 0;
};

using EnvFactory = std::function<std::unique_ptr<Env>()>;

}  // namespace torchbeast
