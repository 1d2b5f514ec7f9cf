// libtorchbeast._C.TlsConfig: the PEM texts of mutual TLS (core/tls.h).
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/bindings.h"
#include "core/tls.h"

namespace torchbeast {
namespace python {
namespace py = pybind11;

void BindTls(py::module_& m) {
  py::class_<TlsConfig>(m, "TlsConfig", R"doc(
Mutual TLS for a server or client over TCP (unix sockets stay plaintext): PEM text, not file
names. A server presents cert_chain (with private_key) and requires a client certificate signed
by root_certs; a client checks that the server's certificate is signed by root_certs and names
the host it dialled, and presents its own cert_chain (a client may leave cert_chain and
private_key empty: a server then refuses it).)doc")
      .def(py::init([](std::string cert_chain, std::string private_key, std::string root_certs) {
             return TlsConfig{std::move(cert_chain), std::move(private_key), std::move(root_certs)};
           }),
           py::arg("cert_chain"), py::arg("private_key"), py::arg("root_certs"))
      .def("__repr__", [](const TlsConfig& tls) {
        return std::string("TlsConfig(cert_chain=") + (tls.cert_chain.empty() ? "''" : "<PEM>") +
               ", private_key=" + (tls.private_key.empty() ? "''" : "<PEM>") +
               ", root_certs=" + (tls.root_certs.empty() ? "''" : "<PEM>") + ")";
      });
}

}  // namespace python
}  // namespace torchbeast
