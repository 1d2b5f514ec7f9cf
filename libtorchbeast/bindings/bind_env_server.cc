// libtorchbeast._C.Server (EnvServer streaming Python step records) and libtorchbeast.Client
// (EnvClient).
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
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

std::string TypeName(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }

// The record keys, in the order of torchbeast.core.episodes.RECORD_KEYS.
constexpr const char* kRecordKeys[] = {"observation",    "reward",           "done", "truncated", "episode_step",
                                       "episode_return", "final_observation"};

// NumPy scalar types are checked only when the Python type is not the expected one.
bool IsNumpy(py::handle obj, const char* type_name) {
  return py::isinstance(obj, py::module_::import("numpy").attr(type_name));
}

bool IsInteger(py::handle v) { return (PyLong_Check(v.ptr()) && !PyBool_Check(v.ptr())) || IsNumpy(v, "integer"); }

std::string Quoted(const char* key) { return std::string("'") + key + "'"; }

// The fields of a record dict; each throws EnvError naming the field.
class RecordReader {
 public:
  explicit RecordReader(py::handle record) {
    if (!py::isinstance<py::dict>(record)) throw EnvError("expected a dict, got " + Describe(record));
    dict_ = py::reinterpret_borrow<py::dict>(record);
    for (const char* key : kRecordKeys) Get(key);
    if (py::len(dict_) != std::size(kRecordKeys)) {
      for (auto item : dict_) {
        const bool known = py::isinstance<py::str>(item.first) &&
                           std::find_if(std::begin(kRecordKeys), std::end(kRecordKeys), [&](const char* key) {
                             return item.first.cast<std::string>() == key;
                           }) != std::end(kRecordKeys);
        if (!known) throw EnvError("unexpected key " + Describe(item.first));
      }
    }
  }

  ArrayNest Nest(const char* key) const {
    try {
      return NestFromPython(Get(key));
    } catch (const std::exception& e) {  // py::type_error or a NumPy error.
      throw EnvError(Quoted(key) + ": " + e.what());
    }
  }

  bool Bool(const char* key) const {
    py::handle v = Get(key);
    if (!PyBool_Check(v.ptr()) && !IsNumpy(v, "bool_")) {
      throw EnvError(Quoted(key) + " must be a bool, got " + TypeName(v));
    }
    return PyObject_IsTrue(v.ptr()) == 1;
  }

  double Real(const char* key) const {
    py::handle v = Get(key);
    if (!PyFloat_Check(v.ptr()) && !IsInteger(v) && !IsNumpy(v, "floating")) {
      throw EnvError(Quoted(key) + " must be a real number, got " + TypeName(v));
    }
    const double value = PyFloat_AsDouble(v.ptr());
    if (value == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    return value;
  }

  int32_t Int32(const char* key) const {
    py::handle v = Get(key);
    if (!IsInteger(v)) throw EnvError(Quoted(key) + " must be an int, got " + TypeName(v));
    int overflow = 0;
    auto index = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
    if (!index) throw py::error_already_set();
    const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (overflow != 0 || value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
      throw EnvError(Quoted(key) + " does not fit int32: " + Describe(v));
    }
    return static_cast<int32_t>(value);
  }

  bool IsNone(const char* key) const { return Get(key).is_none(); }

 private:
  py::handle Get(const char* key) const {
    PyObject* value = PyDict_GetItemString(dict_.ptr(), key);  // Borrowed; null when missing.
    if (value == nullptr) throw EnvError("no " + Quoted(key));
    return value;
  }

  py::dict dict_;
};

// One step record (see torchbeast.core.episodes): every field as it is, after checking types
// and that final_observation comes exactly with truncated, which comes only with done.
EnvStep StepFromRecord(py::handle record) {
  RecordReader r(record);
  EnvStep step;
  step.observation = r.Nest("observation");
  step.reward = static_cast<float>(r.Real("reward"));
  step.done = r.Bool("done");
  step.truncated = r.Bool("truncated");
  step.episode_step = r.Int32("episode_step");
  step.episode_return = static_cast<float>(r.Real("episode_return"));
  if (step.truncated && !step.done) throw EnvError("'truncated' is True but 'done' is False");
  if (step.truncated == r.IsNone("final_observation")) {
    throw EnvError(step.truncated ? "'truncated' is True but 'final_observation' is None"
                                  : "'final_observation' must be None unless 'truncated' is True");
  }
  if (step.truncated) step.final_observation = r.Nest("final_observation");
  return step;
}

// A Python error raised by `call`: a libtorchbeast.EnvError keeps its message as it is (so the
// Python Server can word its env's failures), any other error is prefixed with the call.
EnvError CallError(const std::string& call, py::error_already_set& e, py::handle env_error_type) {
  if (e.matches(env_error_type)) return EnvError(py::str(e.value()).cast<std::string>());
  return EnvError(call + " raised " + e.what());
}

// A Python step stream: initial() and step(action) return step records. Holds the GIL only
// inside its calls; Python errors and bad records become EnvError, which the server sends to
// the client.
class PyEnv : public Env {
 public:
  PyEnv(py::object stream, py::handle env_error_type)
      : stream_(new py::object(std::move(stream))), env_error_type_(env_error_type) {}

  // Made and destroyed on the gRPC thread that serves its stream (see MakeFactory).
  ~PyEnv() override {
    py::gil_scoped_acquire gil;
    try {
      if (py::hasattr(*stream_, "close")) stream_->attr("close")();
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("libtorchbeast._C.Server: stream.close()");
    }
    delete stream_;
    gil.dec_ref();  // Drops the thread state kept by MakeFactory once `gil` is released.
  }

  EnvStep Initial() override {
    return Read("stream.initial()", [this] { return stream_->attr("initial")(); });
  }

  EnvStep Step(const ArrayNest& action) override {
    return Read("stream.step()", [this, &action] { return stream_->attr("step")(NestToPython(action)); });
  }

 private:
  template <typename Call>
  EnvStep Read(const std::string& name, Call call) {
    py::gil_scoped_acquire gil;
    py::object record;
    try {
      record = call();
    } catch (py::error_already_set& e) {
      throw CallError(name, e, env_error_type_);
    }
    try {
      return StepFromRecord(record);
    } catch (const std::exception& e) {  // EnvError naming the field, or a Python error.
      throw EnvError(name + " returned a bad record: " + e.what());
    }
  }

  py::object* stream_;               // Deleted with the GIL held.
  const py::handle env_error_type_;  // libtorchbeast.EnvError, kept alive by the module.
};

EnvFactory MakeFactory(py::object factory, py::handle env_error_type) {
  std::shared_ptr<py::object> holder(new py::object(std::move(factory)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
  return [holder, env_error_type]() -> std::unique_ptr<Env> {
    py::gil_scoped_acquire gil;
    try {
      auto env = std::make_unique<PyEnv>((*holder)(), env_error_type);
      // Keeps this thread's Python thread state until ~PyEnv, instead of making a new one
      // for every call of the stream.
      gil.inc_ref();
      return env;
    } catch (py::error_already_set& e) {
      throw CallError("stream_factory()", e, env_error_type);
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
A gRPC server that streams the step records of Python objects to actors, one object per actor
stream. libtorchbeast.Server builds on it to serve Gymnasium-style envs.

stream_factory() is called once per stream (with the GIL held, like the object's methods) and
must return an object with initial() (the stream's first record) and step(action) (the next
one), each returning a dict with exactly the keys of torchbeast.core.episodes.RECORD_KEYS:
observation (a nest of arrays: dicts, lists, tuples, NumPy arrays), reward (a real number),
done (a bool), truncated (a bool, only with done), episode_step (an int32), episode_return (a
real number) and final_observation (a nest when truncated, None otherwise); close() is called
when the stream ends, if the object has one. The server sends every record as it is: the object
does the episode bookkeeping (torchbeast.core.episodes.EpisodeStream). The action arrives as a
nest of NumPy arrays (a discrete action is a 0-d int64 array).
An error raised by the factory or the object, or a bad record, ends that stream with a gRPC
status carrying the message (the client raises it as EnvError): a libtorchbeast.EnvError's
message as it is, other errors' prefixed with the call that raised them; other streams go on.
address: "unix:/path/to/socket" or "host:port" (port 0 picks a free port: see `port`).
max_streams: streams served at a time (0: no limit); a further stream ends at once with
RESOURCE_EXHAUSTED, before any env is made. An Action that does not parse ends its stream with
INVALID_ARGUMENT, one over 1 MiB with RESOURCE_EXHAUSTED. A TCP port already served by another
server cannot be bound (no SO_REUSEPORT): start() raises. tls: a TlsConfig (mutual TLS over TCP: a
client without a certificate signed by its root_certs is refused) or None (plaintext).
run() blocks until stop(); start() returns once the server listens; all release the GIL.)doc")
      .def(py::init([env_error_type = py::handle(m.attr("EnvError"))](py::object stream_factory, std::string address,
                                                                      int max_streams, std::optional<TlsConfig> tls) {
             return ReleasingGilOnDelete(new EnvServer(MakeFactory(std::move(stream_factory), env_error_type),
                                                       std::move(address), max_streams, std::move(tls)));
           }),
           py::arg("stream_factory"), py::arg("address"), py::arg("max_streams") = 0, py::arg("tls") = py::none())
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
cancel(). tls: a TlsConfig (mutual TLS over TCP; a server that refuses the certificate, or whose
certificate fails the check, raises RpcError) or None (plaintext).)doc")
      .def(py::init([](std::string address, std::optional<TlsConfig> tls) {
             return std::make_shared<EnvClient>(std::move(address), /*max_receive_bytes=*/-1, tls);
           }),
           py::arg("address"), py::arg("tls") = py::none())
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
