#include "core/actor_pool.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <utility>

#include "core/env_client.h"
#include "core/step_check.h"

namespace torchbeast {
namespace {

constexpr std::chrono::milliseconds kInitialBackoff(50);
constexpr std::chrono::milliseconds kMaxBackoff(1000);       // A server back from a restart is rejoined within ~1 s.
constexpr std::chrono::milliseconds kMaxDropBackoff(30000);  // After a drop: a bad server is not hammered.
// A stream that delivered this long after a drop has healed: later drops start from kInitialBackoff.
constexpr std::chrono::seconds kHealedAfter(60);
// Without an observation spec, the largest Step message accepted.
constexpr int64_t kDefaultMaxMessageBytes = 64 << 20;

// A uniformly random duration in [backoff / 2, backoff]: actors dropped together do not retry in step.
std::chrono::milliseconds Jittered(std::chrono::milliseconds backoff) {
  thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int64_t> uniform(backoff.count() / 2, backoff.count());
  return std::chrono::milliseconds(uniform(rng));
}

// The Step size limit: room for an observation and a final observation, four times over, and
// 1 MiB for the rest; capped below 2 GiB (gRPC takes an int).
int MaxMessageBytes(const std::optional<ArrayNest>& observation_spec) {
  if (!observation_spec) return kDefaultMaxMessageBytes;
  const int64_t bytes = 8 * ObservationBytes(*observation_spec) + (1 << 20);
  return static_cast<int>(std::min<int64_t>(bytes, (int64_t{1} << 31) - 1));
}

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
ArrayNest FinalObservationInput(const EnvStep& step, const ArrayNest& zeros) {
  if (!step.final_observation) return zeros;
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
                     ArrayNest initial_agent_state, std::optional<ArrayNest> initial_action,
                     std::optional<ArrayNest> observation_spec, std::chrono::milliseconds env_timeout,
                     std::optional<TlsConfig> tls)
    : unroll_length_(unroll_length),
      learner_queue_(std::move(learner_queue)),
      inference_batcher_(std::move(inference_batcher)),
      initial_agent_state_(std::move(initial_agent_state)),
      initial_action_(initial_action ? std::move(*initial_action) : ArrayNest(Scalar11<int64_t>(DType::kInt64, 0))),
      env_timeout_(env_timeout),
      max_message_bytes_(MaxMessageBytes(observation_spec)),
      tls_(std::move(tls)),
      observation_spec_(std::move(observation_spec)) {
  if (unroll_length_ < 1) throw InvalidArgument("ActorPool: unroll_length must be >= 1");
  if (!learner_queue_) throw InvalidArgument("ActorPool: learner_queue is None");
  if (!inference_batcher_) throw InvalidArgument("ActorPool: inference_batcher is None");
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
  if (env_timeout_.count() < 0) throw InvalidArgument("ActorPool: env_timeout must be >= 0");
  for (const std::string& address : env_server_addresses) {
    if (address.empty()) throw InvalidArgument("ActorPool: an env server address is empty");
    actors_.emplace_back().address = address;
    clients_.emplace_back();
  }
}

ActorPool::~ActorPool() { Stop(); }

void ActorPool::Run() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_) throw Error("ActorPool.run() was already called");
    running_ = true;
  }
  std::thread watchdog;
  if (env_timeout_.count() > 0) watchdog = std::thread(&ActorPool::Watchdog, this);
  std::vector<std::thread> threads;
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (std::size_t i = 0; i < actors_.size(); ++i) StartActorLocked(i);
    // Actors stop only once stop_ is set (by Stop(), a closed queue or a fatal error) or when
    // removed; AddServer() adds no thread after that.
    stop_cv_.wait(lock, [this] { return stop_; });
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  if (watchdog.joinable()) watchdog.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) std::rethrow_exception(error_);
}

void ActorPool::StartActorLocked(std::size_t index) {
  threads_.emplace_back(&ActorPool::RunActor, this, index, actors_[index].address);
}

int64_t ActorPool::AddServer(const std::string& address) {
  if (address.empty()) throw InvalidArgument("ActorPool.add_server: the address is empty");
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return -1;
  for (const ActorState& actor : actors_)
    if (!actor.removed && actor.address == address) return -1;
  actors_.emplace_back().address = address;
  clients_.emplace_back();
  const std::size_t index = actors_.size() - 1;
  if (running_) StartActorLocked(index);
  return static_cast<int64_t>(index);
}

bool ActorPool::RemoveServer(const std::string& address) {
  std::shared_ptr<EnvClient> client;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto actor = std::find_if(actors_.begin(), actors_.end(),
                              [&](const ActorState& a) { return !a.removed && a.address == address; });
    if (actor == actors_.end()) return false;
    actor->removed = true;
    actor->connected = false;
    actor->last_problem = "removed";
    DisarmLocked(&*actor);
    client = clients_[actor - actors_.begin()];
  }
  stop_cv_.notify_all();  // Ends its backoff wait.
  if (client) client->Cancel();
  return true;
}

void ActorPool::Stop() {
  std::vector<std::shared_ptr<EnvClient>> clients;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    clients.assign(clients_.begin(), clients_.end());
  }
  stop_cv_.notify_all();
  watchdog_cv_.notify_all();
  for (const auto& client : clients)
    if (client) client->Cancel();
}

bool ActorPool::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_;
}

bool ActorPool::StoppingOrRemoved(std::size_t index) const {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_ || actors_[index].removed;
}

bool ActorPool::SleepUnlessStopped(std::size_t index, std::chrono::milliseconds duration) {
  std::unique_lock<std::mutex> lock(mu_);
  // Ends early on Stop() or when the actor is removed.
  return !stop_cv_.wait_for(lock, duration, [this, index] { return stop_ || actors_[index].removed; });
}

void ActorPool::Fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = error;
  }
  Stop();
}

std::vector<ActorPool::ActorStatus> ActorPool::status() const {
  const Clock::time_point now = Clock::now();
  std::vector<ActorStatus> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (std::size_t i = 0; i < actors_.size(); ++i) {
    const ActorState& a = actors_[i];
    if (a.removed) continue;
    ActorStatus status;
    status.index = static_cast<int64_t>(i);
    status.address = a.address;
    status.steps = a.steps;
    status.connected = a.connected;
    status.ever_connected = a.ever_connected;
    if (a.last_step) status.seconds_since_last_step = std::chrono::duration<double>(now - *a.last_step).count();
    status.drops = a.drops;
    status.last_problem = a.last_problem;
    out.push_back(std::move(status));
  }
  return out;
}

int64_t ActorPool::num_connected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(actors_.begin(), actors_.end(), [](const ActorState& a) { return a.connected && !a.removed; });
}

ArrayNest ActorPool::SpecFor(const ArrayNest& observation) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!observation_spec_) observation_spec_ = ZerosLike(observation);
  return *observation_spec_;
}

void ActorPool::Arm(std::size_t index) {
  if (env_timeout_.count() == 0) return;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ActorState& actor = actors_[index];
    if (!actor.deadline) wake = armed_++ == 0;  // Later deadlines never come before earlier ones.
    actor.deadline = Clock::now() + env_timeout_;
  }
  if (wake) watchdog_cv_.notify_all();
}

void ActorPool::DisarmLocked(ActorState* actor) {
  if (!actor->deadline) return;
  actor->deadline.reset();
  --armed_;
}

void ActorPool::Delivered(std::size_t index, bool counted) {
  std::lock_guard<std::mutex> lock(mu_);
  ActorState& actor = actors_[index];
  if (counted) ++actor.steps;
  DisarmLocked(&actor);
  actor.connected = true;
  actor.ever_connected = true;
  actor.last_step = Clock::now();
}

void ActorPool::Disconnected(std::size_t index, const std::string& problem, bool dropped) {
  std::lock_guard<std::mutex> lock(mu_);
  ActorState& actor = actors_[index];
  DisarmLocked(&actor);
  actor.connected = false;
  actor.last_problem = problem;
  if (dropped) ++actor.drops;
}

void ActorPool::Watchdog() {
  const std::string reason =
      "sent no step within " + std::to_string(std::chrono::duration<double>(env_timeout_).count()) + " s";
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const Clock::time_point now = Clock::now();
    Clock::time_point next = Clock::time_point::max();
    for (std::size_t i = 0; i < actors_.size(); ++i) {
      ActorState& actor = actors_[i];
      if (!actor.deadline) continue;
      if (*actor.deadline <= now) {
        DisarmLocked(&actor);
        // The actor's Connect() or Step() throws PeerError(reason); it logs and retries.
        if (clients_[i]) clients_[i]->Expire(reason);
      } else {
        next = std::min(next, *actor.deadline);
      }
    }
    // Ends at the next deadline, when the first deadline is armed, or on Stop().
    if (next == Clock::time_point::max()) {
      watchdog_cv_.wait(lock, [this] { return stop_ || armed_ > 0; });
    } else {
      watchdog_cv_.wait_until(lock, next);
    }
  }
}

void ActorPool::RunActor(std::size_t index, std::string address) {
  const std::string actor = "actor " + std::to_string(index);
  Connection connection{kInitialBackoff, kInitialBackoff};
  bool said_waiting = false;
  while (!StoppingOrRemoved(index)) {
    try {
      Stream(index, address, &connection);
    } catch (const ClosedError&) {
      if (StoppingOrRemoved(index) && !stopping()) return;  // RemoveServer() cancelled its stream.
      Disconnected(index, "stopped", /*dropped=*/false);
      Stop();  // The learner queue or the batcher was closed, or Stop() cancelled the stream.
      return;
    } catch (const PeerError& e) {
      Disconnected(index, e.what(), /*dropped=*/true);
      if (StoppingOrRemoved(index)) return;
      const std::chrono::milliseconds wait = Jittered(connection.drop_backoff);
      Log(actor + " (" + address + "): dropped: " + e.what() + "; retrying in " + std::to_string(wait.count()) + " ms");
      if (!SleepUnlessStopped(index, wait)) return;
      connection.drop_backoff = std::min(2 * connection.drop_backoff, kMaxDropBackoff);
    } catch (const RpcError& e) {
      Disconnected(index, e.what(), /*dropped=*/false);
      if (StoppingOrRemoved(index)) return;
      const std::chrono::milliseconds wait = Jittered(connection.backoff);
      if (connection.connected_once) {
        Log(actor + ": " + e.what() + "; reconnecting in " + std::to_string(wait.count()) + " ms");
        connection.lost = true;
      } else if (!said_waiting) {  // Servers often start after the learner: say it once.
        Log(actor + ": waiting for env server " + address + " (not reachable yet: " + e.what() + ")");
        said_waiting = true;
      }
      if (!SleepUnlessStopped(index, wait)) return;
      connection.backoff = std::min(2 * connection.backoff, kMaxBackoff);
    } catch (const std::exception& e) {
      Disconnected(index, e.what(), /*dropped=*/false);
      Log(actor + " (" + address + ") failed: " + e.what());
      Fail(std::current_exception());
      return;
    }
  }
}

void ActorPool::Stream(std::size_t index, const std::string& address, Connection* connection) {
  auto client = std::make_shared<EnvClient>(address, max_message_bytes_, tls_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || actors_[index].removed) return;
    clients_[index] = client;
  }
  Arm(index);
  EnvStep step = client->Connect();
  const ArrayNest spec = SpecFor(step.observation);
  auto check = [&spec](const EnvStep& s) {
    const std::string problem = DescribeBadStep(spec, s);
    if (!problem.empty()) throw PeerError(problem);
  };
  check(step);
  Delivered(index, /*counted=*/false);
  const Clock::time_point stream_start = Clock::now();
  if (connection->lost) Log("actor " + std::to_string(index) + ": reconnected to " + address);
  connection->lost = false;
  connection->connected_once = true;

  const ArrayNest no_final_observation = ZerosLike(AddTimeAndBatchDims(spec));
  ArrayNest agent_state = initial_agent_state_;
  ArrayNest last_action = initial_action_;
  std::vector<ArrayNest> rollout;
  rollout.reserve(unroll_length_ + 1);
  ArrayNest rollout_agent_state = agent_state;  // The "agent_state" input of rollout[0].

  for (;;) {
    if (StoppingOrRemoved(index)) throw ClosedError("ActorPool is stopping or the actor was removed");
    ArrayNest::Map inputs =
        StepInputs(step, last_action, FinalObservationInput(step, no_final_observation), agent_state);
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
      connection->backoff = kInitialBackoff;  // A stream that delivers rollouts is reachable.
      // Delivering is not enough to forgive a drop: a server that goes bad after a few rollouts
      // would otherwise be retried at the shortest backoff forever.
      if (Clock::now() - stream_start >= kHealedAfter) connection->drop_backoff = kInitialBackoff;
      ArrayNest last = std::move(rollout.back());
      rollout.clear();
      rollout.push_back(std::move(last));
      rollout_agent_state = agent_state;
    }

    agent_state = std::move(next_agent_state);
    last_action = action->second;
    Arm(index);
    step = client->Step(RemoveTimeAndBatchDims(last_action));
    check(step);
    Delivered(index, /*counted=*/true);
    count_.fetch_add(1);
  }
}

}  // namespace torchbeast
