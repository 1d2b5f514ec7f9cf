// libtorchbeast._C: the compiled core of PolyBeast. Import it through the `libtorchbeast`
// package, which re-exports the public names.
#include <pybind11/pybind11.h>

#include "bindings/bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "The torch-free C++ core of PolyBeast: batching queues, a dynamic batcher, gRPC env "
      "servers, an actor pool and env server registration, moving nests of NumPy arrays.";
  torchbeast::python::BindArray(m);
  torchbeast::python::BindTls(m);
  torchbeast::python::BindBatchingQueue(m);
  torchbeast::python::BindDynamicBatcher(m);
  torchbeast::python::BindEnvServer(m);
  torchbeast::python::BindActorPool(m);
  torchbeast::python::BindRegistry(m);
}
