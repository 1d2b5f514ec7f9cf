#include "core/actor_pool.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <utility>

#include "core/env_client.h"

namespace torchbeast {
namespace {

constexpr std::chrono::milliseconds kInitialBackoff(50);
constexpr std::chrono::milliseconds kMaxBackoff(2000);

void Log(const std::string& message) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::cerr << "[libtorchbeast.ActorPool] " << message << std::endl;
}

// [1, 1]-shaped array holding `value`.
template <typename T>
Array Scalar11(DType dtype, T value) {
  return Array::Scalar<T>(dtype, value).Reshape({1, 1});
}

ArrayNest AddTimeAndBatchDims(const ArrayNest& nest) {
  return nest.map([](const Array& a) { return a.ExpandDims(0).ExpandDims(0); });
}

ArrayNest RemoveTimeAndBatchDims(const ArrayNest& nest) {
  return nest.map([](const Array& a) {
    if (a.ndim() < 2 || a.shape()[0] != 1 || a.shape()[1] != 1) {
      throw InvalidArgument("ActorPool: the model's action arrays must have leading dims [1, 1] per actor, got " +
                            ShapeString(a.shape()));
    }
    return a.SqueezeFront().SqueezeFront();
  });
}

// One step's model inputs without "agent_state" (all [1, 1, ...]; see actor_pool.h).
ArrayNest::Map StepInputs(const ArrayNest& observation, float reward, bool done, bool truncated,
                          int32_t episode_step, float episode_return, const ArrayNest& last_action) {
  ArrayNest::Map entry;
  entry.emplace("observation", AddTimeAndBatchDims(observation));
  entry.emplace("reward", Scalar11<float>(DType::kFloat32, reward));
  entry.emplace("done", Scalar11<bool>(DType::kBool, done));
  entry.emplace("truncated", Scalar11<bool>(DType::kBool, truncated));
  entry.emplace("episode_step", Scalar11<int32_t>(DType::kInt32, episode_step));
  entry.emplace("episode_return", Scalar11<float>(DType::kFloat32, episode_return));
  entry.emplace("last_action", last_action);
  return entry;
}

const ArrayNest::Map& OutputMap(const ArrayNest& outputs) {
  if (!outputs.is_map()) {
    throw InvalidArgument("ActorPool: the model's outputs must be a dict with an 'action' entry, got " +
                          outputs.KindName());
  }
  return outputs.map();
}

}  // namespace

ActorPool::ActorPool(int64_t unroll_length, std::shared_ptr<BatchingQueue> learner_queue,
                     std::shared_ptr<DynamicBatcher> inference_batcher, std::vector<std::string> env_server_addresses,
                     ArrayNest initial_agent_state, std::optional<ArrayNest> initial_action,
                     std::optional<std::string> truncation_value_key)
    : unroll_length_(unroll_length),
      learner_queue_(std::move(learner_queue)),
      inference_batcher_(std::move(inference_batcher)),
      addresses_(std::move(env_server_addresses)),
      initial_agent_state_(std::move(initial_agent_state)),
      initial_action_(initial_action ? std::move(*initial_action)
                                     : ArrayNest(Scalar11<int64_t>(DType::kInt64, 0))),
      truncation_value_key_(std::move(truncation_value_key)) {
  if (unroll_length_ < 1) throw InvalidArgument("ActorPool: unroll_length must be >= 1");
  if (truncation_value_key_ && truncation_value_key_->empty()) {
    throw InvalidArgument("ActorPool: truncation_value_key must be a model output name or None, got ''");
  }
  if (!learner_queue_) throw InvalidArgument("ActorPool: learner_queue is None");
  if (!inference_batcher_) throw InvalidArgument("ActorPool: inference_batcher is None");
  if (addresses_.empty()) throw InvalidArgument("ActorPool: no env server addresses");
  initial_agent_state_.for_each([](const Array& a) {
    if (a.ndim() < 2 || a.shape()[1] != 1) {
      throw InvalidArgument("ActorPool: initial_agent_state arrays need size 1 at dim 1 (the batch dim), got shape " +
                            ShapeString(a.shape()));
    }
  });
  initial_action_.for_each([](const Array& a) {
    if (a.ndim() < 2 || a.shape()[0] != 1 || a.shape()[1] != 1) {
      throw InvalidArgument("ActorPool: initial_action arrays need leading dims [1, 1], got shape " +
                            ShapeString(a.shape()));
    }
  });
  clients_.resize(addresses_.size());
}

ActorPool::~ActorPool() { Stop(); }

void ActorPool::Run() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_) throw Error("ActorPool.run() was already called");
    running_ = true;
  }
  std::vector<std::thread> threads;
  threads.reserve(addresses_.size());
  for (std::size_t i = 0; i < addresses_.size(); ++i) threads.emplace_back(&ActorPool::RunActor, this, i);
  for (std::thread& t : threads) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) std::rethrow_exception(error_);
}

void ActorPool::Stop() {
  std::vector<std::shared_ptr<EnvClient>> clients;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    clients = clients_;
  }
  stop_cv_.notify_all();
  for (const auto& client : clients)
    if (client) client->Cancel();
}

float ActorPool::TruncationValue(const EnvStep& step, const ArrayNest& last_action, const ArrayNest& agent_state) {
  const std::string& key = *truncation_value_key_;
  if (!step.final_observation) {
    throw Error("ActorPool: the env server sent a truncated step without final_observation (an older server?); "
                "pass truncation_value_key=None to do without time-limit bootstrapping");
  }
  // The cut episode's last transition, as if it had gone on.
  ArrayNest::Map inputs = StepInputs(*step.final_observation, step.reward, /*done=*/false, /*truncated=*/false,
                                     step.episode_step, step.episode_return, last_action);
  inputs.emplace("agent_state", agent_state);
  ArrayNest outputs = inference_batcher_->Compute(ArrayNest(std::move(inputs)));

  const ArrayNest::Map& out = OutputMap(outputs);
  auto found = out.find(key);
  if (found == out.end()) {
    throw InvalidArgument("ActorPool: truncation_value_key '" + key +
                          "' is not among the model's outputs; pass the name of the value (baseline) output, or "
                          "None to do without time-limit bootstrapping");
  }
  if (!found->second.is_leaf() || found->second.leaf().dtype() != DType::kFloat32 ||
      found->second.leaf().numel() != 1) {
    std::string got = found->second.is_leaf() ? std::string(DTypeName(found->second.leaf().dtype())) + " " +
                                                    ShapeString(found->second.leaf().shape())
                                              : found->second.KindName();
    throw InvalidArgument("ActorPool: the model output '" + key +
                          "' (truncation_value_key) must be float32 with one value per actor ([1, 1]), got " + got);
  }
  return *static_cast<const float*>(found->second.leaf().data());
}

bool ActorPool::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_;
}

bool ActorPool::SleepUnlessStopped(std::chrono::milliseconds duration) {
  std::unique_lock<std::mutex> lock(mu_);
  return !stop_cv_.wait_for(lock, duration, [this] { return stop_; });  // Ends early on Stop().
}

void ActorPool::Fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = error;
  }
  Stop();
}

void ActorPool::RunActor(std::size_t index) {
  const std::string& address = addresses_[index];
  std::chrono::milliseconds backoff = kInitialBackoff;
  while (!stopping()) {
    try {
      Stream(index, &backoff);
    } catch (const ClosedError&) {
      Stop();  // The learner queue or the batcher was closed, or Stop() cancelled the stream.
      return;
    } catch (const RpcError& e) {
      if (stopping()) return;
      Log("actor " + std::to_string(index) + ": " + e.what() + "; reconnecting in " +
          std::to_string(backoff.count()) + " ms");
      if (!SleepUnlessStopped(backoff)) return;
      backoff = std::min(2 * backoff, kMaxBackoff);
    } catch (const std::exception& e) {
      Log("actor " + std::to_string(index) + " (" + address + ") failed: " + e.what());
      Fail(std::current_exception());
      return;
    }
  }
}

void ActorPool::Stream(std::size_t index, std::chrono::milliseconds* backoff) {
  auto client = std::make_shared<EnvClient>(addresses_[index]);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    clients_[index] = client;
  }
  EnvStep step = client->Connect();
  if (*backoff > kInitialBackoff) Log("actor " + std::to_string(index) + ": reconnected to " + addresses_[index]);
  *backoff = kInitialBackoff;

  ArrayNest agent_state = initial_agent_state_;
  ArrayNest last_action = initial_action_;
  std::vector<ArrayNest> rollout;
  rollout.reserve(unroll_length_ + 1);
  ArrayNest rollout_agent_state = agent_state;  // The "agent_state" input of rollout[0].

  for (;;) {
    if (stopping()) throw ClosedError("ActorPool is stopping");
    ArrayNest::Map entry = StepInputs(step.observation, step.reward, step.done, step.truncated, step.episode_step,
                                      step.episode_return, last_action);
    ArrayNest::Map inputs = entry;
    inputs.emplace("agent_state", agent_state);
    if (truncation_value_key_) {  // Before the call for the new episode (see "Time limits").
      const float value = step.truncated ? TruncationValue(step, last_action, agent_state) : 0.0f;
      entry.emplace(kTruncationValueEntry, Scalar11<float>(DType::kFloat32, value));
    }

    ArrayNest outputs = inference_batcher_->Compute(ArrayNest(std::move(inputs)));

    const ArrayNest::Map& out = OutputMap(outputs);
    auto action = out.find("action");
    if (action == out.end()) throw InvalidArgument("ActorPool: the model's outputs have no 'action' entry");
    ArrayNest next_agent_state = agent_state;
    for (const auto& [key, value] : out) {
      if (key == "agent_state") {
        next_agent_state = value;
      } else if (!entry.emplace(key, value).second) {
        if (key == kTruncationValueEntry) {
          throw InvalidArgument(std::string("ActorPool: the model output '") + kTruncationValueEntry +
                                "' has the name of the rollout entry the actors add for truncated episodes; rename "
                                "it or pass truncation_value_key=None");
        }
        throw InvalidArgument("ActorPool: the model output '" + key + "' has the name of an actor input");
      }
    }
    rollout.emplace_back(std::move(entry));

    if (static_cast<int64_t>(rollout.size()) == unroll_length_ + 1) {
      ArrayNest::Map item;
      item.emplace("rollout", ConcatenateNests(rollout, /*dim=*/0));
      item.emplace("initial_agent_state", rollout_agent_state);
      learner_queue_->Enqueue(ArrayNest(std::move(item)));
      ArrayNest last = std::move(rollout.back());
      rollout.clear();
      rollout.push_back(std::move(last));
      rollout_agent_state = agent_state;
    }

    agent_state = std::move(next_agent_state);
    last_action = action->second;
    step = client->Step(RemoveTimeAndBatchDims(last_action));
    count_.fetch_add(1);
  }
}

}  // namespace torchbeast
