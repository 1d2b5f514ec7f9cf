#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings/array_pybind.h"
#include "bindings/bindings.h"
#include "core/actor_pool.h"

namespace torchbeast {
namespace python {
namespace {

template <std::size_t N>
py::tuple KeyTuple(const std::array<const char*, N>& keys) {
  py::tuple out(N);
  for (std::size_t i = 0; i < N; ++i) out[i] = py::str(keys[i]);
  return out;
}

}  // namespace

void BindActorPool(py::module_& m) {
  m.attr("STEP_INPUT_KEYS") = KeyTuple(ActorPool::kStepInputKeys);
  m.attr("ROLLOUT_STEP_KEYS") = KeyTuple(ActorPool::kRolloutStepKeys);

  py::class_<ActorPool, std::shared_ptr<ActorPool>>(m, "ActorPool", R"doc(
Runs one actor thread per env server: streams steps, asks inference_batcher for actions and
puts rollouts on learner_queue.

Each step, an actor calls inference_batcher.compute(inputs) with (the keys of STEP_INPUT_KEYS;
every array has leading dims [T=1, B=1]; use DynamicBatcher(batch_dim=1)):
    {"observation": obs nest [1, 1, ...], "reward": float32 [1, 1], "done": bool [1, 1],
     "truncated": bool [1, 1], "episode_step": int32 [1, 1], "episode_return": float32 [1, 1],
     "last_action": previous action [1, 1, ...], "final_observation": obs nest [1, 1, ...],
     "agent_state": agent state nest}
done marks the first step of an episode (the env was just reset; the stream's first step too);
truncated tells whether the episode that ended was cut off by a time limit; on a done step
reward, episode_step and episode_return belong to the episode that ended.
"final_observation" is the cut episode's true last observation on truncated steps (the env
server sends it) and zeros of the observation's structure, shapes and dtypes on all others;
a final observation unlike the observation is a ValueError.
"agent_state" is initial_agent_state at the start of a stream, then the model's previous
"agent_state" output: every array needs size 1 at dim 1, e.g. LSTM (h, c) of [layers, 1, hidden]
each; () for stateless models. Resetting the state on done is the model's job. "last_action" is
initial_action (default: int64 zeros [1, 1]) on a stream's first step.
The model answers each Batch with a dict holding "action" (a nest, [1, B, ...]), optionally
"agent_state" (the new state) and anything else (policy logits, baseline, and e.g.
"truncation_value": its value of final_observation, to bootstrap from at a time limit). The
action goes to the env without its two leading dims.

Rollouts: each step's inputs named by ROLLOUT_STEP_KEYS (all but "final_observation" and
"agent_state") plus the outputs without "agent_state" are concatenated along dim 0 into
unroll_length + 1 steps, outputs beside the step they were computed on; consecutive rollouts of
an actor overlap by one step. An output named like an input is a ValueError. learner_queue gets
{"rollout": {... [T + 1, 1, ...]}, "initial_agent_state": the "agent_state" input of the
rollout's first step}; use BatchingQueue(batch_dim=1).

run() blocks (without the GIL) until every actor stopped. It returns normally when the
learner queue or the batcher is closed or after stop(), and raises the first fatal error
otherwise (EnvError when an env failed, ValueError for bad model outputs). An actor whose
server is not reachable yet says so once on stderr and waits for it; a server that goes away
later is logged and retried. Retries back off from 50 ms to 2 s; the actor drops its partial
rollout and starts over from initial_agent_state, and the other actors go on. count() is the
number of env steps taken so far.

Every step is checked before it reaches the batcher: its observation and final observation
must have the structure, dtypes and shapes of observation_spec (a nest of arrays without the
[1, 1] dims, e.g. zeros; default: the first observation any actor receives), its reward and
episode_return must be finite. A server whose step fails the check or does not decode, whose
message is over the size limit (a few times observation_spec's bytes), or that sends no step
within env_timeout_s (0: no limit; the first step included) is dropped: one line on stderr, e.g.
"actor 2 (unix:/tmp/x.2): dropped: observation 'frame' has shape [3, 64, 65], expected
[3, 64, 64]; retrying in 80 ms", its partial rollout is discarded and it is retried with jittered
backoff (up to 30 s); run() never raises for it. status() and num_connected() tell which
servers deliver now.

Elastic: env_server_addresses may be empty; add_server(address) starts an actor for a new
address at any time (at once when running), remove_server(address) stops one, dropping its
partial rollout. run() then returns only after stop() (or a closed queue or batcher, or a fatal
error). tls: a TlsConfig for the actors' TCP streams (mutual TLS), or None (plaintext).)doc")
      .def(py::init([](int64_t unroll_length, std::shared_ptr<BatchingQueue> learner_queue,
                       std::shared_ptr<DynamicBatcher> inference_batcher, std::vector<std::string> addresses,
                       const ArrayNest& initial_agent_state, const std::optional<ArrayNest>& initial_action,
                       const std::optional<ArrayNest>& observation_spec, double env_timeout_s,
                       std::optional<TlsConfig> tls) {
             if (!(env_timeout_s >= 0) || env_timeout_s > 1e9) {
               throw InvalidArgument("ActorPool: env_timeout_s must be between 0 and 1e9, got " +
                                     std::to_string(env_timeout_s));
             }
             return std::make_shared<ActorPool>(
                 unroll_length, std::move(learner_queue), std::move(inference_batcher), std::move(addresses),
                 initial_agent_state, initial_action, observation_spec,
                 std::chrono::milliseconds(static_cast<int64_t>(std::ceil(env_timeout_s * 1000))), std::move(tls));
           }),
           py::arg("unroll_length"), py::arg("learner_queue"), py::arg("inference_batcher"),
           py::arg("env_server_addresses"), py::arg("initial_agent_state") = py::tuple(),
           py::arg("initial_action") = py::none(), py::arg("observation_spec") = py::none(),
           py::arg("env_timeout_s") = 0.0, py::arg("tls") = py::none())
      .def("run", &ActorPool::Run, py::call_guard<py::gil_scoped_release>())
      .def("stop", &ActorPool::Stop, py::call_guard<py::gil_scoped_release>(),
           "Cancels the actors' streams and backoff waits; actors blocked in the batcher or on a full "
           "learner queue stop when those return or are closed.")
      .def("count", &ActorPool::count, "Env steps taken so far, over all actors.")
      .def("add_server", &ActorPool::AddServer, py::arg("address"), py::call_guard<py::gil_scoped_release>(),
           "Adds an actor for address (started at once when running); returns its index, or -1 when an actor "
           "streams from address already or the pool is stopping.")
      .def("remove_server", &ActorPool::RemoveServer, py::arg("address"), py::call_guard<py::gil_scoped_release>(),
           "Stops the actor of address (its partial rollout is dropped); False when no actor streams from it.")
      .def("num_connected", &ActorPool::num_connected, "Actors whose stream is delivering steps now.")
      .def(
          "status",
          [](const ActorPool& pool) {
            py::list out;
            for (const ActorPool::ActorStatus& a : pool.status()) {
              py::dict d;
              d["index"] = a.index;
              d["address"] = a.address;
              d["connected"] = a.connected;
              d["ever_connected"] = a.ever_connected;
              d["seconds_since_last_step"] =
                  a.seconds_since_last_step ? py::cast(*a.seconds_since_last_step) : py::object(py::none());
              d["drops"] = a.drops;
              d["last_problem"] = a.last_problem;
              d["steps"] = a.steps;
              out.append(std::move(d));
            }
            return out;
          },
          "One dict per actor not removed, in the order they were added: index (its number in log lines), "
          "address, connected (its stream delivers steps now), "
          "ever_connected, seconds_since_last_step (None before the first), drops (times it was dropped) "
          "last_problem (why it last dropped or disconnected, or '') and steps (env steps it took).");
}

}  // namespace python
}  // namespace torchbeast
