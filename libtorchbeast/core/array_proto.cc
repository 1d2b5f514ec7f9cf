#include "core/array_proto.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchbeast {
namespace {

// The largest message gRPC carries (its sizes are ints).
constexpr int64_t kMaxMessageBytes = std::numeric_limits<int32_t>::max();

std::vector<int64_t> ShapeOf(const rpcenv::NDArray& proto) {
  return std::vector<int64_t>(proto.shape().begin(), proto.shape().end());
}

DType CheckedDType(const rpcenv::NDArray& proto) {
  if (!IsValidDType(proto.dtype())) {
    throw InvalidArgument("NDArray with unknown dtype " + std::to_string(proto.dtype()));
  }
  return static_cast<DType>(proto.dtype());
}

// Checks the shape (no overflow, see NumBytes) and that `nbytes` matches it, before anything
// is allocated: the shape comes from a peer. Its size with every zero dimension counted as 1
// must also fit in a message: a zero-sized array with huge dimensions (say [0, 2^62]) would
// otherwise pass, then overflow the shape arithmetic of its batches (the [T, B] dimensions,
// strides) and be refused by NumPy.
void CheckSize(DType dtype, const std::vector<int64_t>& shape, std::size_t nbytes) {
  const int64_t needed = NumBytes(dtype, shape);
  if (static_cast<uint64_t>(needed) != nbytes) {
    throw InvalidArgument("NDArray of dtype " + std::string(DTypeName(dtype)) + " and shape " + ShapeString(shape) +
                          " needs " + std::to_string(needed) + " bytes, got " + std::to_string(nbytes));
  }
  if (needed > 0) return;  // Then its bytes came in a message.
  int64_t extent_bytes = static_cast<int64_t>(ItemSize(dtype));
  bool too_big = false;
  for (int64_t d : shape) {
    if (!too_big && __builtin_mul_overflow(extent_bytes, std::max<int64_t>(d, 1), &extent_bytes)) too_big = true;
  }
  if (too_big || extent_bytes > kMaxMessageBytes) {
    throw InvalidArgument("NDArray of dtype " + std::string(DTypeName(dtype)) + " and shape " + ShapeString(shape) +
                          " is too big: with its zero dimensions counted as 1 it exceeds " +
                          std::to_string(kMaxMessageBytes) + " bytes, the most a message carries");
  }
}

template <typename Proto, typename LeafFn>
ArrayNest FromProtoImpl(Proto* proto, LeafFn&& leaf) {
  switch (proto->value_case()) {
    case rpcenv::ArrayNest::kArray:
      return ArrayNest(leaf(proto));
    case rpcenv::ArrayNest::kList: {
      ArrayNest::Vector v;
      v.reserve(proto->list().items_size());
      for (int i = 0; i < proto->list().items_size(); ++i) {
        if constexpr (std::is_const_v<Proto>) {
          v.push_back(FromProtoImpl(&proto->list().items(i), leaf));
        } else {
          v.push_back(FromProtoImpl(proto->mutable_list()->mutable_items(i), leaf));
        }
      }
      return ArrayNest(std::move(v));
    }
    case rpcenv::ArrayNest::kMap: {
      ArrayNest::Map m;
      if constexpr (std::is_const_v<Proto>) {
        for (const auto& kv : proto->map().items()) m.emplace(kv.first, FromProtoImpl(&kv.second, leaf));
      } else {
        for (auto& kv : *proto->mutable_map()->mutable_items()) m.emplace(kv.first, FromProtoImpl(&kv.second, leaf));
      }
      return ArrayNest(std::move(m));
    }
    case rpcenv::ArrayNest::VALUE_NOT_SET:
      break;
  }
  throw InvalidArgument("ArrayNest message without a value");
}

}  // namespace

void ArrayToProto(const Array& array, rpcenv::NDArray* proto) {
  proto->set_dtype(static_cast<rpcenv::DType>(array.dtype()));
  proto->mutable_shape()->Assign(array.shape().begin(), array.shape().end());
  proto->set_data(array.data(), array.nbytes());
}

Array ArrayFromProto(const rpcenv::NDArray& proto) {
  const DType dtype = CheckedDType(proto);
  std::vector<int64_t> shape = ShapeOf(proto);
  CheckSize(dtype, shape, proto.data().size());
  Array out(dtype, std::move(shape));
  if (out.nbytes() > 0) std::memcpy(out.data(), proto.data().data(), out.nbytes());
  return out;
}

Array ArrayFromProto(rpcenv::NDArray* proto) {
  const DType dtype = CheckedDType(*proto);
  std::vector<int64_t> shape = ShapeOf(*proto);
  CheckSize(dtype, shape, proto->data().size());
  auto bytes = std::make_shared<std::string>();
  bytes->swap(*proto->mutable_data());
  void* data = bytes->data();
  return Array(dtype, std::move(shape), std::shared_ptr<void>(bytes, data), data);
}

void NestToProto(const ArrayNest& nest, rpcenv::ArrayNest* proto) {
  if (nest.is_leaf()) {
    ArrayToProto(nest.leaf(), proto->mutable_array());
  } else if (nest.is_vector()) {
    rpcenv::ArrayList* list = proto->mutable_list();
    for (const ArrayNest& child : nest.vector()) NestToProto(child, list->add_items());
  } else {
    auto* items = proto->mutable_map()->mutable_items();
    for (const auto& [key, child] : nest.map()) NestToProto(child, &(*items)[key]);
  }
}

ArrayNest NestFromProto(const rpcenv::ArrayNest& proto) {
  return FromProtoImpl(&proto, [](const rpcenv::ArrayNest* p) { return ArrayFromProto(p->array()); });
}

ArrayNest NestFromProto(rpcenv::ArrayNest* proto) {
  return FromProtoImpl(proto, [](rpcenv::ArrayNest* p) { return ArrayFromProto(p->mutable_array()); });
}

}  // namespace torchbeast
