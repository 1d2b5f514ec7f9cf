#include "core/actor_pool.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <iterator>
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

// An all-zeros nest of `nest`'s structure, shapes and dtypes.
ArrayNest ZerosLike(const ArrayNest& nest) {
  return nest.map([](const Array& a) { return Array::Zeros(a.dtype(), a.shape()); });
}

// The "final_observation" input of `step` (see actor_pool.h): `zeros` when it has none.
ArrayNest FinalObservationInput(const EnvStep& step, const ArrayNest& zeros, const std::string& address) {
  if (!step.final_observation) return zeros;
  const std::string mismatch = DescribeMismatch(step.observation, *step.final_observation, /*batch_dim=*/-1);
  if (!mismatch.empty()) {
    throw InvalidArgument("ActorPool: the env server " + address +
                          " sent a final_observation unlike its observation (" + mismatch + ")");
  }
  return AddTimeAndBatchDims(*step.final_observation);
}

// One step's Compute() inputs, named by kStepInputKeys (all [1, 1, ...]; see actor_pool.h).
ArrayNest::Map StepInputs(const EnvStep& step, const ArrayNest& last_action, ArrayNest final_observation,
                          const ArrayNest& agent_state) {
  ArrayNest values[] = {AddTimeAndBatchDims(step.observation),
                        Scalar11<float>(DType::kFloat32, step.reward),
                        Scalar11<bool>(DType::kBool, step.done),
                        Scalar11<bool>(DType::kBool, step.truncated),
                        Scalar11<int32_t>(DType::kInt32, step.episode_step),
                        Scalar11<float>(DType::kFloat32, step.episode_return),
                        last_action,
                        std::move(final_observation),
                        agent_state};
  static_assert(std::size(values) == ActorPool::kStepInputKeys.size());
  ArrayNest::Map inputs;
  for (std::size_t i = 0; i < std::size(values); ++i)
    inputs.emplace(ActorPool::kStepInputKeys[i], std::move(values[i]));
  return inputs;
}

bool IsStepInput(const std::string& key) {
  const auto& keys = ActorPool::kStepInputKeys;
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

// The inputs a rollout entry keeps (kRolloutStepKeys).
ArrayNest::Map RolloutStep(const ArrayNest::Map& inputs) {
  ArrayNest::Map entry;
  for (const char* key : ActorPool::kRolloutStepKeys) entry.emplace(key, inputs.at(key));
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
                     ArrayNest initial_agent_state, std::optional<ArrayNest> initial_action)
    : unroll_length_(unroll_length),
      learner_queue_(std::move(learner_queue)),
      inference_batcher_(std::move(inference_batcher)),
      addresses_(std::move(env_server_addresses)),
      initial_agent_state_(std::move(initial_agent_state)),
      initial_action_(initial_action ? std::move(*initial_action) : ArrayNest(Scalar11<int64_t>(DType::kInt64, 0))) {
  if (unroll_length_ < 1) throw InvalidArgument("ActorPool: unroll_length must be >= 1");
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
  const std::string actor = "actor " + std::to_string(index);
  Connection connection{kInitialBackoff};
  bool said_waiting = false;
  while (!stopping()) {
    try {
      Stream(index, &connection);
    } catch (const ClosedError&) {
      Stop();  // The learner queue or the batcher was closed, or Stop() cancelled the stream.
      return;
    } catch (const RpcError& e) {
      if (stopping()) return;
      if (connection.connected_once) {
        Log(actor + ": " + e.what() + "; reconnecting in " + std::to_string(connection.backoff.count()) + " ms");
      } else if (!said_waiting) {  // Servers often start after the learner: say it once.
        Log(actor + ": waiting for env server " + address + " (not reachable yet: " + e.what() + ")");
        said_waiting = true;
      }
      if (!SleepUnlessStopped(connection.backoff)) return;
      connection.backoff = std::min(2 * connection.backoff, kMaxBackoff);
    } catch (const std::exception& e) {
      Log(actor + " (" + address + ") failed: " + e.what());
      Fail(std::current_exception());
      return;
    }
  }
}

void ActorPool::Stream(std::size_t index, Connection* connection) {
  const std::string& address = addresses_[index];
  auto client = std::make_shared<EnvClient>(address);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    clients_[index] = client;
  }
  EnvStep step = client->Connect();
  if (connection->connected_once && connection->backoff > kInitialBackoff) {
    Log("actor " + std::to_string(index) + ": reconnected to " + address);
  }
  connection->connected_once = true;
  connection->backoff = kInitialBackoff;

  const ArrayNest no_final_observation = ZerosLike(AddTimeAndBatchDims(step.observation));
  ArrayNest agent_state = initial_agent_state_;
  ArrayNest last_action = initial_action_;
  std::vector<ArrayNest> rollout;
  rollout.reserve(unroll_length_ + 1);
  ArrayNest rollout_agent_state = agent_state;  // The "agent_state" input of rollout[0].

  for (;;) {
    if (stopping()) throw ClosedError("ActorPool is stopping");
    ArrayNest::Map inputs =
        StepInputs(step, last_action, FinalObservationInput(step, no_final_observation, address), agent_state);
    ArrayNest::Map entry = RolloutStep(inputs);

    ArrayNest outputs = inference_batcher_->Compute(ArrayNest(std::move(inputs)));

    const ArrayNest::Map& out = OutputMap(outputs);
    auto action = out.find("action");
    if (action == out.end()) throw InvalidArgument("ActorPool: the model's outputs have no 'action' entry");
    ArrayNest next_agent_state = agent_state;
    for (const auto& [key, value] : out) {
      if (key == "agent_state") {
        next_agent_state = value;
      } else if (IsStepInput(key)) {
        throw InvalidArgument("ActorPool: the model output '" + key + "' has the name of an actor input");
      } else {
        entry.emplace(key, value);
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
