// ActorPool: one thread per env server that streams steps, asks the inference batcher for
// actions and hands rollouts to the learner queue.
//
// Per step, each actor calls inference_batcher->Compute() with this map (kStepInputKeys; every
// array has leading dims [T=1, B=1]; the batcher concatenates callers along dim 1):
//   "observation"       the env's observation nest, each array [1, 1, ...]
//   "reward"            float32 [1, 1]  reward of the transition that led here
//   "done"              bool    [1, 1]  first step of an episode (the env was just reset)
//   "truncated"         bool    [1, 1]  with done: the previous episode hit a time limit
//   "episode_step"      int32   [1, 1]  (on a done step: length of the episode that ended)
//   "episode_return"    float32 [1, 1]  (on a done step: return of the episode that ended)
//   "last_action"       the previous "action" output (initial_action on a stream's first step)
//   "final_observation" the step's final observation ([1, 1, ...], sent by the env server on
//                       truncated steps: the cut episode's true last observation), else zeros
//                       of the observation's structure, shapes and dtypes
//   "agent_state"       the agent state: initial_agent_state at a stream's start, then the
//                       model's previous "agent_state" output (resetting it on done is the
//                       model's job)
// The model answers with a map holding "action" (a nest, [1, 1, ...] per caller) and,
// optionally, "agent_state" (the new state) and any other entries (policy logits, baseline,
// and e.g. "truncation_value": its value of "final_observation", for the learner to bootstrap
// from at a time limit). The action is sent to the env without its two leading dims (a
// discrete action is a 0-d array).
//
// Every step becomes one rollout entry: the inputs named by kRolloutStepKeys (all but
// "final_observation" and "agent_state") plus the outputs without "agent_state" (an output
// named like an input is an error). Entries are concatenated along dim 0 into rollouts of unroll_length + 1 steps;
// consecutive rollouts overlap by one step (the last step of a rollout is the first of the
// next). Each rollout is enqueued on the learner queue as
//   {"rollout": {...each array [T + 1, 1, ...]}, "initial_agent_state": the "agent_state" input
//    of the rollout's first step}
// so a learner queue with batch_dim=1 makes [T + 1, B, ...] batches.
//
// Every step an actor receives is checked against the run's observation spec (structure,
// dtypes, shapes; the final observation likewise) and must have a finite reward and
// episode_return (core/step_check.h); without a spec, the first observation any actor
// receives becomes it. A server whose step fails the check or does not decode, whose message
// exceeds the size limit (a few times the spec's bytes), or that sends no step within
// env_timeout (its first one included) is dropped: one log line naming the actor, its address
// and the problem; its partial rollout is discarded and it is retried later. Nothing it sent
// reaches a batch, and the other actors go on.
//
// Until an actor first reaches its server, it logs once that it is waiting and retries
// silently; later, when its server goes away, it logs and reconnects. Retries back off
// exponentially with jitter: reconnections from 50 ms to 1 s, starting over once a stream has
// delivered a rollout; retries after drops from 50 ms to 30 s, starting over only once a stream
// has delivered for a minute (a server that goes bad after a few rollouts is not hammered).
// A reconnecting actor starts a new stream from
// initial_agent_state and initial_action; the other actors go on. status() tells which actors
// are connected now and when each last delivered a step. The pool stops when the learner
// queue or the batcher is closed (Run() returns normally) or when an actor fails for another
// reason, such as an env error or a bad model output (Run() rethrows the first such error).
//
// Elastic: AddServer() starts an actor for a new address at any time, before or during Run();
// RemoveServer() stops one (its partial rollout is discarded). The pool may start without any
// address and wait for servers to be added. With a TlsConfig, TCP streams are mutual TLS.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/array.h"
#include "core/batching_queue.h"
#include "core/dynamic_batcher.h"
#include "core/env.h"
#include "core/tls.h"

namespace torchbeast {

class EnvClient;

class ActorPool {
 public:
  // The Compute() input keys, in the order of the list above.
  static constexpr std::array<const char*, 9> kStepInputKeys = {
      "observation",       "reward",     "done", "truncated", "episode_step", "episode_return", "last_action",
      "final_observation", "agent_state"};
  // The inputs stored in each rollout entry beside the model's outputs.
  static constexpr std::array<const char*, 7> kRolloutStepKeys = {
      "observation", "reward", "done", "truncated", "episode_step", "episode_return", "last_action"};

  // What status() says about one actor.
  struct ActorStatus {
    int64_t index = 0;  // The actor's number in log lines.
    std::string address;
    bool connected = false;       // Its current stream has delivered a good step and not failed since.
    bool ever_connected = false;  // Some stream of it delivered a good step.
    std::optional<double> seconds_since_last_step;  // Since its last good step; none before the first.
    int64_t drops = 0;                              // Times it was dropped (see above).
    std::string last_problem;                       // Why it was last dropped or disconnected, or "".
    int64_t steps = 0;                              // Env steps it took (counted like count()).
  };

  // `initial_agent_state`: every array must have size 1 at dim 1 (e.g. LSTM state
  // [layers, 1, hidden]); an empty tuple for stateless models. `initial_action`: the
  // "last_action" of a stream's first step; defaults to int64 zeros of shape [1, 1].
  // `observation_spec`: the observation nest every step must match (arrays without the
  // [1, 1] dims; their values are ignored). `env_timeout`: how long a server may take to send
  // a step (0: forever). `env_server_addresses` may be empty (see AddServer()). `tls`: the
  // credentials of the actors' TCP streams (core/tls.h).
  ActorPool(int64_t unroll_length, std::shared_ptr<BatchingQueue> learner_queue,
            std::shared_ptr<DynamicBatcher> inference_batcher, std::vector<std::string> env_server_addresses,
            ArrayNest initial_agent_state, std::optional<ArrayNest> initial_action = std::nullopt,
            std::optional<ArrayNest> observation_spec = std::nullopt,
            std::chrono::milliseconds env_timeout = std::chrono::milliseconds(0),
            std::optional<TlsConfig> tls = std::nullopt);

  ~ActorPool();
  ActorPool(const ActorPool&) = delete;
  ActorPool& operator=(const ActorPool&) = delete;

  // Runs one actor thread per address (and per address added later) and blocks until Stop()
  // or a fatal error, then joins them (see above). Throws Error if called twice.
  void Run();
  // Adds an actor for `address` (started at once when running); returns its index, or -1 when
  // an actor of the pool streams from `address` already or the pool is stopping.
  int64_t AddServer(const std::string& address);
  // Stops the actor of `address` (its stream is cancelled, its partial rollout dropped); false
  // when no actor streams from it. Its index is not reused.
  bool RemoveServer(const std::string& address);
  // Asks every actor to stop: cancels their streams and backoff waits. Actors blocked in the
  // batcher or on a full learner queue stop once those return (or are closed).
  void Stop();

  // Env steps taken so far, over all actors (the first observation of a stream is not a step).
  int64_t count() const { return count_.load(); }
  // One entry per actor not removed, in the order they were added.
  std::vector<ActorStatus> status() const;
  // Actors connected now.
  int64_t num_connected() const;

 private:
  // One actor's reconnection state.
  struct Connection {
    std::chrono::milliseconds backoff;       // Before reconnecting to a server that went away.
    std::chrono::milliseconds drop_backoff;  // Before retrying a server dropped for what it sent.
    bool connected_once = false;             // A stream was opened: later failures are reconnections.
    bool lost = false;                       // The last stream broke (not dropped): say when it is back.
  };
  using Clock = std::chrono::steady_clock;

  void RunActor(std::size_t index, std::string address);
  // Streams from one connection until something throws.
  void Stream(std::size_t index, const std::string& address, Connection* connection);
  // The observation spec, taken from `observation` when the pool has none yet.
  ArrayNest SpecFor(const ArrayNest& observation);
  // Starts and ends actor `index`'s wait for its server (the env_timeout deadline).
  void Arm(std::size_t index);
  // Records a good step of actor `index`'s stream (and disarms its deadline); `counted`: an env
  // step (not a stream's first observation).
  void Delivered(std::size_t index, bool counted);
  // Records that actor `index`'s stream ended because of `problem`.
  void Disconnected(std::size_t index, const std::string& problem, bool dropped);
  // Expires the streams whose deadline passed until Stop().
  void Watchdog();
  bool stopping() const;
  // Stop() was called or actor `index` was removed.
  bool StoppingOrRemoved(std::size_t index) const;
  // Sleeps for `duration` or until Stop() or actor `index` is removed; returns false if so.
  bool SleepUnlessStopped(std::size_t index, std::chrono::milliseconds duration);
  // Starts the thread of actor `index` (mu_ held, running_).
  void StartActorLocked(std::size_t index);
  void Fail(std::exception_ptr error);

  const int64_t unroll_length_;
  const std::shared_ptr<BatchingQueue> learner_queue_;
  const std::shared_ptr<DynamicBatcher> inference_batcher_;
  const ArrayNest initial_agent_state_;
  const ArrayNest initial_action_;
  const std::chrono::milliseconds env_timeout_;
  const int max_message_bytes_;  // Of a Step from a server.
  const std::optional<TlsConfig> tls_;

  std::atomic<int64_t> count_{0};

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;  // Signalled when stop_ becomes true or an actor is removed.
  bool running_ /* GUARDED_BY(mu_) */ = false;
  bool stop_ /* GUARDED_BY(mu_) */ = false;
  std::exception_ptr error_ /* GUARDED_BY(mu_) */;                        // The first fatal error.
  std::deque<std::shared_ptr<EnvClient>> clients_ /* GUARDED_BY(mu_) */;  // Per actor, for Stop().
  std::vector<std::thread> threads_ /* GUARDED_BY(mu_) */;                // Actor threads, joined by Run().
  std::optional<ArrayNest> observation_spec_ /* GUARDED_BY(mu_) */;
  struct ActorState {
    std::string address;
    bool removed = false;  // By RemoveServer(): its thread ends.
    int64_t steps = 0;
    bool connected = false;
    bool ever_connected = false;
    std::optional<Clock::time_point> last_step;
    std::optional<Clock::time_point> deadline;  // While waiting for the server, with env_timeout.
    int64_t drops = 0;
    std::string last_problem;
  };
  // Clears `actor`'s deadline, if armed (mu_ held).
  void DisarmLocked(ActorState* actor);
  std::deque<ActorState> actors_ /* GUARDED_BY(mu_) */;
  int64_t armed_ /* GUARDED_BY(mu_) */ = 0;  // Actors with a deadline.
  std::condition_variable watchdog_cv_;      // Signalled when the first deadline is armed and on Stop().
};

}  // namespace torchbeast
