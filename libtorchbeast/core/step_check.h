// Checks of the steps an env server sends against the run's step spec, before an actor lets
// them near a batch: a peer is never trusted to send what the learner expects.
#pragma once

#include <cstdint>
#include <string>

#include "core/array.h"
#include "core/env.h"

namespace torchbeast {

// "" when `step` fits `observation_spec` (a nest of arrays giving the observation's structure,
// dtypes and shapes, without the [T, B] dims): its observation and its final observation (if
// any) have the spec's keys, dtypes and shapes, and its reward and episode_return are finite.
// Otherwise what is wrong, e.g. "observation 'frame' has shape [3, 64, 65], expected
// [3, 64, 64]" or "reward is nan".
std::string DescribeBadStep(const ArrayNest& observation_spec, const EnvStep& step);

// The bytes of one observation of `observation_spec`.
int64_t ObservationBytes(const ArrayNest& observation_spec);

}  // namespace torchbeast
