// libtorchbeast._C.Registry (the learner's end of env server registration) and Registrar (the
// env server's end), core/registry.h.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "core/errors.h"
#include "core/registry.h"

namespace torchbeast {
namespace python {
namespace py = pybind11;
namespace {

std::chrono::milliseconds Milliseconds(double seconds, const char* name) {
  if (!(seconds > 0) || seconds > 1e6) {
    throw InvalidArgument(std::string(name) + " must be between 0 and 1e6 seconds, got " + std::to_string(seconds));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000)));
}

}  // namespace

void BindRegistry(py::module_& m) {
  m.def("address_problem", &AddressProblem, py::arg("address"),
        "Why address is not 'unix:/path' or 'host:port' (port 1-65535, IPv6 in brackets), or '' when it is.");

  py::class_<Registry, std::shared_ptr<Registry>>(m, "Registry", R"doc(
The learner's end of env server registration: serves the Register RPC of rpcenv.proto on
address ("host:port", port 0 picks one, or "unix:/path") and keeps a lease per registered env
server address. Servers repeat their registration every heartbeat_s seconds. leases() says
when each address was last registered, by whom, and whether its server said it is leaving;
forget(address) removes one (a later registration makes it new again). A registration with a
bad address or over the limits is refused and changes nothing. tls: a TlsConfig (mutual TLS
over TCP) or None (plaintext).)doc")
      .def(py::init([](std::string address, double heartbeat_s, std::optional<TlsConfig> tls) {
             return std::make_shared<Registry>(std::move(address), Milliseconds(heartbeat_s, "heartbeat_s"),
                                               std::move(tls));
           }),
           py::arg("address"), py::arg("heartbeat_s"), py::arg("tls") = py::none())
      .def("start", &Registry::Start, py::call_guard<py::gil_scoped_release>(),
           "Starts serving; raises RuntimeError when the address cannot be bound.")
      .def("stop", &Registry::Stop, py::call_guard<py::gil_scoped_release>(), "Stops serving. Idempotent.")
      .def_property_readonly("address", &Registry::address)
      .def_property_readonly("port", &Registry::port, "The bound TCP port (0 for unix sockets or before start).")
      .def(
          "leases",
          [](const Registry& registry) {
            py::list out;
            for (const Registry::Lease& lease : registry.leases()) {
              py::dict d;
              d["address"] = lease.address;
              d["peer"] = lease.peer;
              d["seconds_since_heartbeat"] = lease.seconds_since_heartbeat;
              d["leaving"] = lease.leaving;
              out.append(std::move(d));
            }
            return out;
          },
          "One dict per registered address, ordered by address: address, peer (who registered it, as gRPC "
          "names it), seconds_since_heartbeat, leaving (its server said it stops).")
      .def("forget", &Registry::Forget, py::arg("address"), "Removes address's lease; False when it had none.");

  py::class_<Registrar, std::shared_ptr<Registrar>>(m, "Registrar", R"doc(
The env server's end of registration: a thread registers addresses (this host's env servers,
as the learner reaches them) with the learner's Registry at `learner`, repeats it as often as
the learner asks, and retries with backoff while the learner is not reachable (one line on
stderr per outage, and one when registered). stop() ends it and tells the learner the addresses
are leaving. tls: a TlsConfig (mutual TLS over TCP) or None (plaintext).)doc")
      .def(py::init<std::string, std::vector<std::string>, std::optional<TlsConfig>>(), py::arg("learner"),
           py::arg("addresses"), py::arg("tls") = py::none())
      .def("start", &Registrar::Start, py::call_guard<py::gil_scoped_release>())
      .def(
          "stop",
          [](Registrar& registrar, bool say_leaving, double timeout_s) {
            const auto timeout = Milliseconds(timeout_s, "timeout_s");
            py::gil_scoped_release release;
            registrar.Stop(say_leaving, timeout);
          },
          py::arg("say_leaving") = true, py::arg("timeout_s") = 1.0,
          "Ends the heartbeats; with say_leaving, tells the learner (waiting at most timeout_s). Idempotent.")
      .def_property_readonly("learner", &Registrar::learner)
      .def(
          "state",
          [](const Registrar& registrar) {
            const Registrar::State state = registrar.state();
            py::dict d;
            d["registered"] = state.registered;
            d["registrations"] = state.registrations;
            d["last_error"] = state.last_error;
            d["heartbeat_s"] = state.heartbeat_s;
            return d;
          },
          "registered (the last attempt succeeded), registrations (successful ones so far), last_error "
          "(of the last failed attempt, or ''), heartbeat_s (as the learner asked).");
}

}  // namespace python
}  // namespace torchbeast
