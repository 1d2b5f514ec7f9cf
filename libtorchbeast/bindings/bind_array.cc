// Array <-> NumPy conversion (declared in array_pybind.h), the exception types, and two helpers
// for tests: _nest_roundtrip and _proto_roundtrip.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bindings/array_pybind.h"
#include "bindings/bindings.h"
#include "core/array_proto.h"
#include "core/errors.h"

namespace torchbeast {
namespace python {
namespace {

py::dtype NumpyDType(DType dtype) {
  switch (dtype) {
    case DType::kBool:
      return py::dtype::of<bool>();
    case DType::kUInt8:
      return py::dtype::of<uint8_t>();
    case DType::kInt8:
      return py::dtype::of<int8_t>();
    case DType::kInt16:
      return py::dtype::of<int16_t>();
    case DType::kUInt16:
      return py::dtype::of<uint16_t>();
    case DType::kInt32:
      return py::dtype::of<int32_t>();
    case DType::kUInt32:
      return py::dtype::of<uint32_t>();
    case DType::kInt64:
      return py::dtype::of<int64_t>();
    case DType::kUInt64:
      return py::dtype::of<uint64_t>();
    case DType::kFloat16:
      return py::dtype("float16");
    case DType::kFloat32:
      return py::dtype::of<float>();
    case DType::kFloat64:
      return py::dtype::of<double>();
  }
  throw InvalidArgument("invalid dtype");
}

std::optional<DType> FromNumpyDType(const py::dtype& dtype) {
  const char kind = dtype.kind();
  const auto size = dtype.itemsize();
  if (kind == 'b' && size == 1) return DType::kBool;
  if (kind == 'u') {
    if (size == 1) return DType::kUInt8;
    if (size == 2) return DType::kUInt16;
    if (size == 4) return DType::kUInt32;
    if (size == 8) return DType::kUInt64;
  }
  if (kind == 'i') {
    if (size == 1) return DType::kInt8;
    if (size == 2) return DType::kInt16;
    if (size == 4) return DType::kInt32;
    if (size == 8) return DType::kInt64;
  }
  if (kind == 'f') {
    if (size == 2) return DType::kFloat16;
    if (size == 4) return DType::kFloat32;
    if (size == 8) return DType::kFloat64;
  }
  return std::nullopt;
}

std::string PathString(const std::vector<std::string>& path) {
  if (path.empty()) return "at the root";
  std::string s = "at ";
  for (const std::string& p : path) s += p;
  return s;
}

Array FromPython(py::handle obj, const std::vector<std::string>& path) {
  py::array arr;
  if (py::isinstance<py::array>(obj)) {
    arr = py::reinterpret_borrow<py::array>(obj);
  } else {
    arr = py::module_::import("numpy").attr("asarray")(obj);
  }
  std::optional<DType> dtype = FromNumpyDType(arr.dtype());
  if (!dtype) {
    throw py::type_error("unsupported array dtype " + py::str(arr.dtype()).cast<std::string>() + " (from " +
                         py::str(py::type::of(obj)).cast<std::string>() + ") " + PathString(path) +
                         "; expected bool, (u)int8/16/32/64 or float16/32/64");
  }
  // NumPy writes native order as '='; an explicit order other than ours needs a byte swap.
  constexpr bool kLittle = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
  const char byteorder = arr.dtype().byteorder();
  if (byteorder == (kLittle ? '>' : '<')) {
    arr = arr.attr("astype")(arr.dtype().attr("newbyteorder")("="));
  }
  if (!(arr.flags() & py::array::c_style)) arr = py::array::ensure(arr, py::array::c_style);
  std::vector<int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
  Array out(*dtype, std::move(shape));
  if (out.nbytes() > 0) std::memcpy(out.data(), arr.data(), out.nbytes());
  return out;
}

ArrayNest FromPythonNest(py::handle obj, std::vector<std::string>& path) {
  if (py::isinstance<py::dict>(obj)) {
    ArrayNest::Map map;
    for (auto item : py::reinterpret_borrow<py::dict>(obj)) {
      if (!py::isinstance<py::str>(item.first)) {
        throw py::type_error("nest dict keys must be str, got " + py::repr(item.first).cast<std::string>() + " " +
                             PathString(path));
      }
      std::string key = item.first.cast<std::string>();
      path.push_back("['" + key + "']");
      map.emplace(key, FromPythonNest(item.second, path));
      path.pop_back();
    }
    return ArrayNest(std::move(map));
  }
  if (py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) {
    ArrayNest::Vector vector;
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    vector.reserve(seq.size());
    for (std::size_t i = 0; i < seq.size(); ++i) {
      path.push_back("[" + std::to_string(i) + "]");
      vector.push_back(FromPythonNest(seq[i], path));
      path.pop_back();
    }
    return ArrayNest(std::move(vector));
  }
  return ArrayNest(FromPython(obj, path));
}

}  // namespace

py::array ArrayToNumpy(const Array& array) {
  // The capsule owns a copy of the Array's owner: the buffer lives as long as the NumPy array.
  auto* owner = new std::shared_ptr<void>(array.owner());
  py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<void>*>(p); });
  std::vector<py::ssize_t> shape(array.shape().begin(), array.shape().end());
  return py::array(NumpyDType(array.dtype()), std::move(shape), array.data(), base);
}

Array ArrayFromPython(py::handle obj) { return FromPython(obj, {}); }

py::object NestToPython(const ArrayNest& nest) {
  if (nest.is_leaf()) return ArrayToNumpy(nest.leaf());
  if (nest.is_vector()) {
    const auto& v = nest.vector();
    py::tuple out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = NestToPython(v[i]);
    return std::move(out);
  }
  py::dict out;
  for (const auto& [key, child] : nest.map()) out[py::str(key)] = NestToPython(child);
  return std::move(out);
}

ArrayNest NestFromPython(py::handle obj) {
  std::vector<std::string> path;
  return FromPythonNest(obj, path);
}

void BindArray(py::module_& m) {
  py::register_exception<ClosedError>(m, "ClosedError", PyExc_RuntimeError);
  py::register_exception<BatchDroppedError>(m, "BatchDroppedError", PyExc_RuntimeError);
  py::register_exception<EnvError>(m, "EnvError", PyExc_RuntimeError);
  py::register_exception<RpcError>(m, "RpcError", PyExc_ConnectionError);
  py::register_exception<PeerError>(m, "PeerError", PyExc_ConnectionError);

  m.def(
      "_nest_roundtrip", [](const ArrayNest& nest) { return nest; }, py::arg("nest"),
      "Converts a nest to C++ arrays and back (for tests): the result owns C++ buffers.");
  m.def(
      "_proto_roundtrip",
      [](const ArrayNest& nest) {
        rpcenv::ArrayNest proto;
        NestToProto(nest, &proto);
        rpcenv::ArrayNest parsed;
        if (!parsed.ParseFromString(proto.SerializeAsString())) throw Error("cannot parse ArrayNest");
        return NestFromProto(&parsed);
      },
      py::arg("nest"), "Sends a nest through its protobuf wire format and back (for tests).");
}

}  // namespace python
}  // namespace torchbeast
