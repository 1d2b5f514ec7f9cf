// Placeholder, replaced by the full binding.
#include <pybind11/pybind11.h>
PYBIND11_MODULE(nest, m) { m.doc() = "nested structures"; }
