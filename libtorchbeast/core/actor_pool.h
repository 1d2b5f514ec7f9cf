// ActorPool: one thread per env server that streams steps, asks the inference batcher for
// actions and hands rollouts to the learner queue.
//
// Per step, each actor calls inference_batcher->Compute() with this map (every array has
// leading dims [T=1, B=1]; the batcher concatenates callers along dim 1):
//   "observation"    the env's observation nest, each array [1, 1, ...]
//   "reward"         float32 [1, 1]  reward of the transition that led here
//   "done"           bool    [1, 1]  first step of an episode (the env was just reset)
//   "truncated"      bool    [1, 1]  with done: the previous episode hit a time limit
//   "episode_step"   int32   [1, 1]  (on a done step: length of the episode that ended)
//   "episode_return" float32 [1, 1]  (on a done step: return of the episode that ended)
//   "last_action"    the previous "action" output (initial_action on a stream's first step)
//   "agent_state"    the agent state: initial_agent_state at a stream's start, then the model's
//                    previous "agent_state" output (resetting it on done is the model's job)
// The model answers with a map holding "action" (a nest, [1, 1, ...] per caller) and,
// optionally, "agent_state" (the new state) and any other entries (policy logits, baseline).
// The action is sent to the env without its two leading dims (a discrete action is a 0-d array).
//
// Time limits: when a step has truncated = true (the env server then also sends the cut
// episode's true final observation), an actor with a truncation_value_key first makes one
// extra Compute() call whose inputs have the structure above and describe the cut episode's
// last transition: "observation" = the final observation, "done" = "truncated" = false,
// "reward", "episode_step", "episode_return" of the done step (they belong to the ended
// episode), "last_action" = the action just sent, "agent_state" = the actor's current state.
// It reads output[truncation_value_key] (float32, one value per caller: [1, 1]) as the value of
// that state and ignores everything else in the answer, the agent state included; then comes
// the ordinary call for the new episode's first step. The learner bootstraps from this value,
// a time limit not being a terminal state.
//
// Every step becomes one rollout entry: the inputs above without "agent_state", plus the
// outputs without "agent_state" (names may not collide), plus, with a truncation_value_key,
// "truncation_value" float32 [1, 1]: the value read above on truncated steps, 0 on every other
// step (a model output of that name is then an error). Entries are concatenated along dim 0
// into rollouts of unroll_length + 1 steps; consecutive rollouts overlap by one step (the last
// step of a rollout is the first of the next). Each rollout is enqueued on the learner queue as
//   {"rollout": {...each array [T + 1, 1, ...]}, "initial_agent_state": the "agent_state" input
//    of the rollout's first step}
// so a learner queue with batch_dim=1 makes [T + 1, B, ...] batches.
//
// When a server cannot be reached or goes away, its actor logs to stderr and reconnects with
// exponential backoff (50 ms to 2 s), dropping its partial rollout and starting a new stream
// from initial_agent_state; the other actors go on. The pool stops when the learner queue or
// the batcher is closed (Run() returns normally) or when an actor fails for another reason,
// such as an env error or a bad model output (Run() rethrows the first such error).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/array.h"
#include "core/batching_queue.h"
#include "core/dynamic_batcher.h"
#include "core/env.h"

namespace torchbeast {

class EnvClient;

class ActorPool {
 public:
  static constexpr const char* kDefaultTruncationValueKey = "baseline";
  // The rollout entry holding the value of a truncated episode's final observation.
  static constexpr const char* kTruncationValueEntry = "truncation_value";

  // `initial_agent_state`: every array must have size 1 at dim 1 (e.g. LSTM state
  // [layers, 1, hidden]); an empty tuple for stateless models. `initial_action`: the
  // "last_action" of a stream's first step; defaults to int64 zeros of shape [1, 1].
  // `truncation_value_key`: the model output holding the value estimate (see "Time limits"
  // above); std::nullopt turns the extra call and the "truncation_value" entry off.
  ActorPool(int64_t unroll_length, std::shared_ptr<BatchingQueue> learner_queue,
            std::shared_ptr<DynamicBatcher> inference_batcher, std::vector<std::string> env_server_addresses,
            ArrayNest initial_agent_state, std::optional<ArrayNest> initial_action = std::nullopt,
            std::optional<std::string> truncation_value_key = std::string(kDefaultTruncationValueKey));

  ~ActorPool();
  ActorPool(const ActorPool&) = delete;
  ActorPool& operator=(const ActorPool&) = delete;

  // Runs one actor thread per address and blocks until all have stopped (see above). Throws
  // Error if called twice.
  void Run();
  // Asks every actor to stop: cancels their streams and backoff waits. Actors blocked in the
  // batcher or on a full learner queue stop once those return (or are closed).
  void Stop();

  // Env steps taken so far, over all actors (the first observation of a stream is not a step).
  int64_t count() const { return count_.load(); }

 private:
  void RunActor(std::size_t index);
  // Streams from one connection until something throws.
  void Stream(std::size_t index, std::chrono::milliseconds* backoff);
  // The extra Compute() call on a truncated step (see "Time limits" above).
  float TruncationValue(const EnvStep& step, const ArrayNest& last_action, const ArrayNest& agent_state);
  bool stopping() const;
  // Sleeps for `duration` or until Stop(); returns false if stopping.
  bool SleepUnlessStopped(std::chrono::milliseconds duration);
  void Fail(std::exception_ptr error);

  const int64_t unroll_length_;
  const std::shared_ptr<BatchingQueue> learner_queue_;
  const std::shared_ptr<DynamicBatcher> inference_batcher_;
  const std::vector<std::string> addresses_;
  const ArrayNest initial_agent_state_;
  const ArrayNest initial_action_;
  const std::optional<std::string> truncation_value_key_;

  std::atomic<int64_t> count_{0};

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;  // Signalled when stop_ becomes true.
  bool running_ /* GUARDED_BY(mu_) */ = false;
  bool stop_ /* GUARDED_BY(mu_) */ = false;
  std::exception_ptr error_ /* GUARDED_BY(mu_) */;  // The first fatal error.
  std::vector<std::shared_ptr<EnvClient>> clients_ /* GUARDED_BY(mu_) */;  // Per actor, for Stop().
};

}  // namespace torchbeast
