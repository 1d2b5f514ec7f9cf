#include "core/step_check.h"

#include <cmath>
#include <utility>

namespace torchbeast {
namespace {

// `what` and the path below it: "observation", "observation 'frame'", "observation 'a'[0]".
std::string Where(const std::string& what, const std::string& path) { return path.empty() ? what : what + " " + path; }

std::string KeyPath(const std::string& path, const std::string& key) {
  return path.empty() ? "'" + key + "'" : path + "['" + key + "']";
}

std::string Describe(const ArrayNest& spec, const ArrayNest& nest, const std::string& what, const std::string& path) {
  if (spec.is_leaf()) {
    if (!nest.is_leaf()) return Where(what, path) + " is " + nest.KindName() + ", expected an array";
    const Array& s = spec.leaf();
    const Array& a = nest.leaf();
    if (a.dtype() != s.dtype()) {
      return Where(what, path) + " has dtype " + DTypeName(a.dtype()) + ", expected " + DTypeName(s.dtype());
    }
    if (a.shape() != s.shape()) {
      return Where(what, path) + " has shape " + ShapeString(a.shape()) + ", expected " + ShapeString(s.shape());
    }
    return "";
  }
  if (spec.is_vector()) {
    if (!nest.is_vector() || nest.vector().size() != spec.vector().size()) {
      return Where(what, path) + " is " + nest.KindName() + ", expected " + spec.KindName();
    }
    for (std::size_t i = 0; i < spec.vector().size(); ++i) {
      std::string d = Describe(spec.vector()[i], nest.vector()[i], what, path + "[" + std::to_string(i) + "]");
      if (!d.empty()) return d;
    }
    return "";
  }
  if (!nest.is_map()) return Where(what, path) + " is " + nest.KindName() + ", expected " + spec.KindName();
  for (const auto& [key, value] : nest.map()) {
    if (spec.map().count(key) == 0) return Where(what, path) + " has an unexpected key '" + key + "'";
  }
  for (const auto& [key, value] : spec.map()) {
    auto it = nest.map().find(key);
    if (it == nest.map().end()) return Where(what, path) + " lacks the key '" + key + "'";
    std::string d = Describe(value, it->second, what, KeyPath(path, key));
    if (!d.empty()) return d;
  }
  return "";
}

std::string DescribeNonFinite(const char* name, float value) {
  if (std::isfinite(value)) return "";
  return std::string(name) + " is " + (std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf");
}

}  // namespace

std::string DescribeBadStep(const ArrayNest& observation_spec, const EnvStep& step) {
  std::string problem = Describe(observation_spec, step.observation, "observation", "");
  if (problem.empty() && step.final_observation) {
    problem = Describe(observation_spec, *step.final_observation, "final_observation", "");
  }
  if (problem.empty()) problem = DescribeNonFinite("reward", step.reward);
  if (problem.empty()) problem = DescribeNonFinite("episode_return", step.episode_return);
  return problem;
}

int64_t ObservationBytes(const ArrayNest& observation_spec) {
  int64_t total = 0;
  observation_spec.for_each([&total](const Array& a) { total += static_cast<int64_t>(a.nbytes()); });
  return total;
}

}  // namespace torchbeast
