#include "core/step_check.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace torchbeast {
namespace {

ArrayNest Observation(std::vector<int64_t> frame_shape = {3, 64, 64}, DType frame_dtype = DType::kUInt8) {
  return ArrayNest(ArrayNest::Map{{"frame", Array::Zeros(frame_dtype, std::move(frame_shape))},
                                  {"position", Array::Zeros(DType::kFloat32, {2})}});
}

EnvStep Step(ArrayNest observation) {
  EnvStep step;
  step.observation = std::move(observation);
  step.reward = 1.0f;
  step.episode_return = 3.0f;
  return step;
}

TEST(StepCheckTest, AGoodStepPasses) {
  EnvStep step = Step(Observation());
  EXPECT_EQ(DescribeBadStep(Observation(), step), "");
  step.truncated = step.done = true;
  step.final_observation = Observation();
  EXPECT_EQ(DescribeBadStep(Observation(), step), "");
}

TEST(StepCheckTest, NamesTheKeyAndTheMismatch) {
  EXPECT_EQ(DescribeBadStep(Observation(), Step(Observation({3, 64, 65}))),
            "observation 'frame' has shape [3, 64, 65], expected [3, 64, 64]");
  EXPECT_EQ(DescribeBadStep(Observation(), Step(Observation({3, 64, 64}, DType::kFloat32))),
            "observation 'frame' has dtype float32, expected uint8");
  ArrayNest extra = Observation();
  extra.map().emplace("secret", Array::Zeros(DType::kUInt8, {1}));
  EXPECT_EQ(DescribeBadStep(Observation(), Step(extra)), "observation has an unexpected key 'secret'");
  ArrayNest missing = Observation();
  missing.map().erase("position");
  EXPECT_EQ(DescribeBadStep(Observation(), Step(missing)), "observation lacks the key 'position'");
  EXPECT_EQ(DescribeBadStep(Observation(), Step(ArrayNest(Array::Zeros(DType::kUInt8, {3})))),
            "observation is a leaf, expected a map with keys [frame, position]");
  ArrayNest nested = Observation();
  nested.map().at("position") = ArrayNest(ArrayNest::Vector{Array::Zeros(DType::kFloat32, {2})});
  EXPECT_EQ(DescribeBadStep(Observation(), Step(nested)), "observation 'position' is a vector of 1, expected an array");
}

TEST(StepCheckTest, TheFinalObservationIsCheckedToo) {
  EnvStep step = Step(Observation());
  step.final_observation = Observation({3, 64, 63});
  EXPECT_EQ(DescribeBadStep(Observation(), step),
            "final_observation 'frame' has shape [3, 64, 63], expected [3, 64, 64]");
}

TEST(StepCheckTest, RewardsMustBeFinite) {
  EnvStep step = Step(Observation());
  step.reward = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(DescribeBadStep(Observation(), step), "reward is nan");
  step.reward = 0.0f;
  step.episode_return = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(DescribeBadStep(Observation(), step), "episode_return is -inf");
}

TEST(StepCheckTest, ObservationBytes) { EXPECT_EQ(ObservationBytes(Observation()), 3 * 64 * 64 + 2 * 4); }

}  // namespace
}  // namespace torchbeast
