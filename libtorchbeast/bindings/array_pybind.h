// The one place where arrays and nests cross between Python and C++.
//
// C++ -> Python: an Array becomes a NumPy array that shares the C++ buffer (its base object is
// a capsule holding the Array's owner), so nothing is copied. Vectors become tuples and maps
// become dicts.
// Python -> C++: dicts (str keys) become maps, lists and tuples become vectors, anything else
// goes through np.asarray (NumPy arrays, scalars, objects with __array__) and is copied into a
// new C-contiguous buffer, so the C++ side never holds Python objects and can run without the
// GIL. Supported dtypes: bool, (u)int8/16/32/64, float16/32/64; byte-swapped input is converted.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <utility>

#include "core/array.h"

namespace torchbeast {
namespace python {

namespace py = pybind11;

py::array ArrayToNumpy(const Array& array);
// Throws py::type_error naming the path for an unsupported object or dtype.
Array ArrayFromPython(py::handle obj);
py::object NestToPython(const ArrayNest& nest);
ArrayNest NestFromPython(py::handle obj);

}  // namespace python
}  // namespace torchbeast

namespace pybind11 {
namespace detail {

// ArrayNest has no default constructor, so this caster starts from an empty vector instead of
// using PYBIND11_TYPE_CASTER.
template <>
struct type_caster<torchbeast::ArrayNest> {
  torchbeast::ArrayNest value{torchbeast::ArrayNest::Vector{}};

  static constexpr auto name = const_name("ArrayNest");
  template <typename T>
  using cast_op_type = movable_cast_op_type<T>;

  operator torchbeast::ArrayNest*() { return &value; }
  operator torchbeast::ArrayNest&() { return value; }
  operator torchbeast::ArrayNest&&() && { return std::move(value); }

  bool load(handle src, bool /*convert*/) {
    value = torchbeast::python::NestFromPython(src);
    return true;
  }

  static handle cast(const torchbeast::ArrayNest& src, return_value_policy /*policy*/, handle /*parent*/) {
    return torchbeast::python::NestToPython(src).release();
  }
};

}  // namespace detail
}  // namespace pybind11
