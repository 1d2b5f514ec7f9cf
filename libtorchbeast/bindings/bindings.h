// One Bind<Component>() per binding file; module.cc calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace torchbeast {
namespace python {

void BindArray(pybind11::module_& m);  // Exceptions and array helpers.
void BindBatchingQueue(pybind11::module_& m);
void BindDynamicBatcher(pybind11::module_& m);
void BindEnvServer(pybind11::module_& m);
void BindActorPool(pybind11::module_& m);
void BindTls(pybind11::module_& m);  // Before the bindings that take a TlsConfig.
void BindRegistry(pybind11::module_& m);

}  // namespace python
}  // namespace torchbeast
