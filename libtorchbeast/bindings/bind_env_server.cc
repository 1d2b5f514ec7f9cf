// libtorchbeast.Server (EnvServer running Python envs) and libtorchbeast.Client (EnvClient).
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>

#include "bindings/array_pybind.h"
#include "bindings/bindings.h"
#include "core/env_client.h"
#include "core/env_server.h"

namespace torchbeast {
namespace python {
namespace {

std::string Describe(py::handle obj) { return py::repr(obj).cast<std::string>().substr(0, 200); }

// A Gymnasium-style Python env. Holds the GIL only inside its calls; Python errors become
// EnvError with the Python message, which the server sends to the client.
class PyEnv : public Env {
 public:
  explicit PyEnv(py::object env) : env_(new py::object(std::move(env))) {}

  // Made and destroyed on the gRPC thread that serves its stream (see MakeFactory).
  ~PyEnv() override {
    py::gil_scoped_acquire gil;
    try {
      if (py::hasattr(*env_, "close")) env_->attr("close")();
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("libtorchbeast.Server: env.close()");
    }
    delete env_;
    gil.dec_ref();  // Drops the thread state kept by MakeFactory once `gil` is released.
  }

  ArrayNest Reset() override {
    py::gil_scoped_acquire gil;
    try {
      py::object result = env_->attr("reset")();
      if (!py::isinstance<py::tuple>(result) || py::len(result) != 2) {
        throw EnvError("env.reset() must return (observation, info), got " + Describe(result));
      }
      return NestFromPython(result[py::int_(0)]);
    } catch (py::error_already_set& e) {
      throw EnvError(std::string("env.reset() raised ") + e.what());
    }
  }

  EnvResult Step(const ArrayNest& action) override {
    py::gil_scoped_acquire gil;
    try {
      py::object result = env_->attr("step")(NestToPython(action));
      if (!py::isinstance<py::tuple>(result) || py::len(result) != 5) {
        throw EnvError("env.step() must return (observation, reward, terminated, truncated, info), got " +
                       Describe(result));
      }
      auto t = py::reinterpret_borrow<py::tuple>(result);
      EnvResult out;
      out.observation = NestFromPython(t[0]);
      out.reward = py::float_(t[1]).cast<double>();
      out.terminated = PyObject_IsTrue(t[2].ptr()) == 1;
      out.truncated = PyObject_IsTrue(t[3].ptr()) == 1;
      return out;
    } catch (py::error_already_set& e) {
      throw EnvError(std::string("env.step() raised ") + e.what());
    }
  }

 private:
  py::object* env_;  // Deleted with the GIL held.
};

EnvFactory MakeFactory(py::object factory) {
  std::shared_ptr<py::object> holder(new py::object(std::move(factory)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
  return [holder]() -> std::unique_ptr<Env> {
    py::gil_scoped_acquire gil;
    try {
      auto env = std::make_unique<PyEnv>((*holder)());
      // Keeps this thread's Python thread state until ~PyEnv, instead of making a new one
      // for every reset() and step() of the stream.
      gil.inc_ref();
      return env;
    } catch (py::error_already_set& e) {
      throw EnvError(std::string("env_factory() raised ") + e.what());
    }
  };
}

// Deletes without the GIL: stopping a server waits for stream handlers that need it.
template <typename T>
std::shared_ptr<T> ReleasingGilOnDelete(T* p) {
  return std::shared_ptr<T>(p, [](T* q) {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      delete q;
    } else {
      delete q;
    }
  });
}

py::dict StepToPython(const EnvStep& step) {
  py::dict d;
  d["observation"] = NestToPython(step.observation);
  d["reward"] = step.reward;
  d["done"] = step.done;
  d["truncated"] = step.truncated;
  d["episode_step"] = step.episode_step;
  d["episode_return"] = step.episode_return;
  d["final_observation"] = step.final_observation ? NestToPython(*step.final_observation) : py::none();
  return d;
}

}  // namespace

void BindEnvServer(py::module_& m) {
  py::class_<EnvServer, std::shared_ptr<EnvServer>>(m, "Server", R"doc(
A gRPC server that runs one Python environment per actor stream.

env_factory() is called once per stream (with the GIL held, like the env's methods) and must
return a Gymnasium-style env: reset() -> (observation, info) and step(action) ->
(observation, reward, terminated, truncated, info); close() is called when the stream ends, if
the env has one. Observations are nests of arrays (dicts, lists, tuples, NumPy arrays). The
action arrives as a nest of NumPy arrays (a discrete action is a 0-d int64 array).
The server resets the env at episode end itself: the step that follows carries the new
episode's first observation with done=True, truncated telling whether the episode ended by a
time limit (truncated and not terminated), the ended episode's episode_step and
episode_return and, when truncated, final_observation: the observation step() returned with
truncated=True, before the reset.
Errors raised by the env or the factory end that stream with a gRPC status carrying the Python
error message (the actor pool raises it as EnvError); other streams go on.
address: "unix:/path/to/socket" or "host:port" (port 0 picks a free port: see `port`).
run() blocks until stop(); start() returns once the server listens; all release the GIL.)doc")
      .def(py::init([](py::object env_factory, std::string address) {
             return ReleasingGilOnDelete(new EnvServer(MakeFactory(std::move(env_factory)), std::move(address)));
           }),
           py::arg("env_factory"), py::arg("address"))
      .def("run", &EnvServer::Run, py::call_guard<py::gil_scoped_release>(),
           "Serves until stop() (from another thread). Raises RuntimeError if the address cannot be bound.")
      .def("start", &EnvServer::Start, py::call_guard<py::gil_scoped_release>(),
           "Starts serving in the background and returns.")
      .def("wait", &EnvServer::Wait, py::call_guard<py::gil_scoped_release>(), "Blocks until stop().")
      .def("stop", &EnvServer::Stop, py::call_guard<py::gil_scoped_release>(),
           "Cancels open streams, waits for their handlers and makes run() return. Idempotent.")
      .def_property_readonly("address", &EnvServer::address)
      .def_property_readonly("port", &EnvServer::port, "The bound TCP port (0 for unix sockets or before start).");

  py::class_<EnvClient, std::shared_ptr<EnvClient>>(m, "Client", R"doc(
One stream to an env server, for tests and benchmarks (the ActorPool has its own).
connect() and step(action) return dicts with observation, reward, done, truncated,
episode_step, episode_return and final_observation (the cut episode's true final observation
on truncated steps, None on all others). They raise EnvError when the env failed, RpcError (a
ConnectionError) when the server cannot be reached or the stream broke, and ClosedError after
cancel().)doc")
      .def(py::init<std::string>(), py::arg("address"))
      .def(
          "connect",
          [](EnvClient& c) {
            EnvStep step;
            {
              py::gil_scoped_release release;
              step = c.Connect();
            }
            return StepToPython(step);
          },
          "Opens a new stream; returns the first step (after reset).")
      .def(
          "step",
          [](EnvClient& c, const ArrayNest& action) {
            EnvStep step;
            {
              py::gil_scoped_release release;
              step = c.Step(action);
            }
            return StepToPython(step);
          },
          py::arg("action"))
      .def("close", &EnvClient::Close, py::call_guard<py::gil_scoped_release>(), "Ends the stream cleanly.")
      .def("cancel", &EnvClient::Cancel, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("address", &EnvClient::address);
}

}  // namespace python
}  // namespace torchbeast
