#include "core/array.h"

#include <cstdlib>
#include <cstring>
#include <utility>

namespace torchbeast {
namespace {

constexpr std::size_t kAlignment = 64;

std::shared_ptr<void> Allocate(std::size_t nbytes) {
  // aligned_alloc needs a size that is a multiple of the alignment (and not 0).
  std::size_t rounded = ((nbytes + kAlignment - 1) / kAlignment) * kAlignment;
  if (rounded == 0) rounded = kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

int64_t Product(const std::vector<int64_t>& shape, std::size_t begin, std::size_t end) {
  int64_t n = 1;
  for (std::size_t i = begin; i < end; ++i) n *= shape[i];
  return n;
}

}  // namespace

int64_t NumElements(const std::vector<int64_t>& shape) {
  for (int64_t d : shape) {
    if (d < 0) throw InvalidArgument("negative dimension in shape " + ShapeString(shape));
  }
  int64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      throw InvalidArgument("shape " + ShapeString(shape) + " has more elements than int64 can count");
    }
  }
  return n;
}

int64_t NumBytes(DType dtype, const std::vector<int64_t>& shape) {
  int64_t n = 0;
  if (__builtin_mul_overflow(NumElements(shape), static_cast<int64_t>(ItemSize(dtype)), &n)) {
    throw InvalidArgument(std::string("an array of dtype ") + DTypeName(dtype) + " and shape " + ShapeString(shape) +
                          " has more bytes than int64 can count");
  }
  return n;
}

bool IsValidDType(int32_t value) { return value >= 0 && value < kNumDTypes; }

std::size_t ItemSize(DType dtype) {
  switch (dtype) {
    case DType::kBool:
    case DType::kUInt8:
    case DType::kInt8:
      return 1;
    case DType::kInt16:
    case DType::kUInt16:
    case DType::kFloat16:
      return 2;
    case DType::kInt32:
    case DType::kUInt32:
    case DType::kFloat32:
      return 4;
    case DType::kInt64:
    case DType::kUInt64:
    case DType::kFloat64:
      return 8;
  }
  throw InvalidArgument("invalid dtype " + std::to_string(static_cast<int32_t>(dtype)));
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBool:
      return "bool";
    case DType::kUInt8:
      return "uint8";
    case DType::kInt8:
      return "int8";
    case DType::kInt16:
      return "int16";
    case DType::kUInt16:
      return "uint16";
    case DType::kInt32:
      return "int32";
    case DType::kUInt32:
      return "uint32";
    case DType::kInt64:
      return "int64";
    case DType::kUInt64:
      return "uint64";
    case DType::kFloat16:
      return "float16";
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
  }
  return "invalid";
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Array::Array(DType dtype, std::vector<int64_t> shape)
    : dtype_(dtype), shape_(std::move(shape)), numel_(NumElements(shape_)) {
  NumBytes(dtype_, shape_);  // Throws when the byte size overflows.
  owner_ = Allocate(nbytes());
  data_ = owner_.get();
}

Array::Array(DType dtype, std::vector<int64_t> shape, std::shared_ptr<void> owner, void* data)
    : dtype_(dtype), shape_(std::move(shape)), numel_(NumElements(shape_)), owner_(std::move(owner)), data_(data) {
  NumBytes(dtype_, shape_);  // Throws when the byte size overflows.
}

Array Array::Zeros(DType dtype, std::vector<int64_t> shape) {
  Array a(dtype, std::move(shape));
  std::memset(a.data(), 0, a.nbytes());
  return a;
}

Array Array::Reshape(std::vector<int64_t> shape) const {
  if (NumElements(shape) != numel_) {
    throw InvalidArgument("cannot reshape an array of shape " + ShapeString(shape_) + " to " + ShapeString(shape));
  }
  return Array(dtype_, std::move(shape), owner_, data_);
}

Array Array::ExpandDims(int64_t dim) const {
  if (dim < 0 || dim > ndim()) {
    throw InvalidArgument("ExpandDims: dim " + std::to_string(dim) + " out of range for shape " + ShapeString(shape_));
  }
  std::vector<int64_t> shape = shape_;
  shape.insert(shape.begin() + dim, 1);
  return Array(dtype_, std::move(shape), owner_, data_);
}

Array Array::SqueezeFront() const {
  if (shape_.empty() || shape_[0] != 1) {
    throw InvalidArgument("SqueezeFront: expected a leading dimension of size 1, got shape " + ShapeString(shape_));
  }
  return Array(dtype_, std::vector<int64_t>(shape_.begin() + 1, shape_.end()), owner_, data_);
}

Array Array::Copy() const {
  Array a(dtype_, shape_);
  if (nbytes() > 0) std::memcpy(a.data(), data_, nbytes());
  return a;
}

bool Array::Equals(const Array& other) const {
  return dtype_ == other.dtype_ && shape_ == other.shape_ &&
         (nbytes() == 0 || std::memcmp(data_, other.data_, nbytes()) == 0);
}

Array Concatenate(const std::vector<const Array*>& arrays, int64_t dim) {
  if (arrays.empty()) throw InvalidArgument("Concatenate: no arrays");
  const Array& first = *arrays[0];
  if (dim < 0 || dim >= first.ndim()) {
    throw InvalidArgument("cannot concatenate along dim " + std::to_string(dim) + " arrays of shape " +
                          ShapeString(first.shape()));
  }
  int64_t total = 0;
  for (std::size_t k = 0; k < arrays.size(); ++k) {
    const Array& a = *arrays[k];
    if (a.dtype() != first.dtype()) {
      throw InvalidArgument(std::string("cannot concatenate arrays of dtypes ") + DTypeName(first.dtype()) + " and " +
                            DTypeName(a.dtype()));
    }
    bool same = a.ndim() == first.ndim();
    for (int64_t i = 0; same && i < a.ndim(); ++i) same = i == dim || a.shape()[i] == first.shape()[i];
    if (!same) {
      throw InvalidArgument("cannot concatenate along dim " + std::to_string(dim) + " arrays of shapes " +
                            ShapeString(first.shape()) + " and " + ShapeString(a.shape()));
    }
    if (__builtin_add_overflow(total, a.shape()[dim], &total)) {
      throw InvalidArgument("cannot concatenate: the size along dim " + std::to_string(dim) + " overflows int64");
    }
  }
  std::vector<int64_t> shape = first.shape();
  shape[dim] = total;
  Array out(first.dtype(), std::move(shape));
  // Nothing to copy: return before looping over `outer`, which a zero-sized array with a large
  // leading dimension (from a peer) can make huge.
  if (out.nbytes() == 0) return out;
  // Each array is `outer` chunks of shape[dim:] elements; the output interleaves the chunks.
  const int64_t outer = Product(first.shape(), 0, dim);
  const std::size_t item = ItemSize(first.dtype());
  auto* dst = static_cast<char*>(out.data());
  for (int64_t o = 0; o < outer; ++o) {
    for (const Array* a : arrays) {
      const std::size_t chunk = static_cast<std::size_t>(Product(a->shape(), dim, a->shape().size())) * item;
      if (chunk == 0) continue;
      std::memcpy(dst, static_cast<const char*>(a->data()) + o * chunk, chunk);
      dst += chunk;
    }
  }
  return out;
}

std::vector<Array> Split(const Array& array, int64_t dim, const std::vector<int64_t>& sizes) {
  if (dim < 0 || dim >= array.ndim()) {
    throw InvalidArgument("cannot split along dim " + std::to_string(dim) + " an array of shape " +
                          ShapeString(array.shape()));
  }
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  if (total != array.shape()[dim]) {
    throw InvalidArgument("cannot split an array of shape " + ShapeString(array.shape()) + " along dim " +
                          std::to_string(dim) + " into pieces of total size " + std::to_string(total));
  }
  const int64_t outer = Product(array.shape(), 0, dim);
  const std::size_t row =
      static_cast<std::size_t>(Product(array.shape(), dim + 1, array.shape().size())) * ItemSize(array.dtype());
  const std::size_t full = row * array.shape()[dim];
  std::vector<Array> out;
  out.reserve(sizes.size());
  int64_t offset = 0;
  for (int64_t s : sizes) {
    std::vector<int64_t> shape = array.shape();
    shape[dim] = s;
    const char* src = static_cast<const char*>(array.data()) + offset * row;
    if (outer == 1) {
      out.emplace_back(array.dtype(), std::move(shape), array.owner(), const_cast<char*>(src));
    } else {
      Array piece(array.dtype(), std::move(shape));
      auto* dst = static_cast<char*>(piece.data());
      const std::size_t chunk = row * s;
      for (int64_t o = 0; o < outer && chunk > 0; ++o) std::memcpy(dst + o * chunk, src + o * full, chunk);
      out.push_back(std::move(piece));
    }
    offset += s;
  }
  return out;
}

ArrayNest ConcatenateNests(const std::vector<ArrayNest>& nests, int64_t dim) {
  return nest::map_many([dim](const std::vector<const Array*>& leaves) { return Concatenate(leaves, dim); }, nests);
}

std::vector<ArrayNest> SplitNest(const ArrayNest& nest, int64_t dim, const std::vector<int64_t>& sizes) {
  std::vector<std::vector<Array>> pieces;  // pieces[leaf][k]
  nest.for_each([&](const Array& a) { pieces.push_back(Split(a, dim, sizes)); });
  std::vector<ArrayNest> out;
  out.reserve(sizes.size());
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    std::vector<Array> leaves;
    leaves.reserve(pieces.size());
    for (auto& leaf_pieces : pieces) leaves.push_back(std::move(leaf_pieces[k]));
    out.push_back(nest.pack_as(std::move(leaves)));
  }
  return out;
}

int64_t BatchSize(const ArrayNest& nest, int64_t dim) {
  if (nest.empty()) throw InvalidArgument("a nest without arrays has no batch size");
  const Array& first = nest.front();
  if (dim < 0 || dim >= first.ndim()) {
    throw InvalidArgument("batch dim " + std::to_string(dim) + " out of range for an array of shape " +
                          ShapeString(first.shape()));
  }
  return first.shape()[dim];
}

namespace {

std::string Describe(const ArrayNest& spec, const ArrayNest& nest, int64_t batch_dim, const std::string& path,
                     int64_t* batch_size) {
  const std::string where = path.empty() ? "at the root" : "at " + path;
  if (spec.value().index() != nest.value().index()) {
    return where + ": " + nest.KindName() + ", expected " + spec.KindName();
  }
  if (spec.is_leaf()) {
    const Array& a = nest.leaf();
    const Array& s = spec.leaf();
    if (a.dtype() != s.dtype()) {
      return where + ": dtype " + DTypeName(a.dtype()) + ", expected " + DTypeName(s.dtype());
    }
    bool same = a.ndim() == s.ndim() && a.ndim() > batch_dim;
    for (int64_t i = 0; same && i < a.ndim(); ++i) same = i == batch_dim || a.shape()[i] == s.shape()[i];
    if (!same) {
      const std::string any_size = batch_dim < 0 ? "" : " (any size at batch dim " + std::to_string(batch_dim) + ")";
      return where + ": shape " + ShapeString(a.shape()) + ", expected " + ShapeString(s.shape()) + any_size;
    }
    if (batch_dim < 0) return "";
    if (*batch_size < 0) *batch_size = a.shape()[batch_dim];
    if (a.shape()[batch_dim] != *batch_size) {
      return where + ": batch size " + std::to_string(a.shape()[batch_dim]) + " (shape " + ShapeString(a.shape()) +
             "), but an earlier array has batch size " + std::to_string(*batch_size);
    }
    return "";
  }
  if (spec.is_vector()) {
    if (spec.vector().size() != nest.vector().size()) {
      return where + ": " + nest.KindName() + ", expected " + spec.KindName();
    }
    for (std::size_t i = 0; i < spec.vector().size(); ++i) {
      std::string d =
          Describe(spec.vector()[i], nest.vector()[i], batch_dim, path + "[" + std::to_string(i) + "]", batch_size);
      if (!d.empty()) return d;
    }
    return "";
  }
  const auto& sm = spec.map();
  const auto& nm = nest.map();
  bool same_keys = sm.size() == nm.size();
  for (auto si = sm.begin(), ni = nm.begin(); same_keys && si != sm.end(); ++si, ++ni) {
    same_keys = si->first == ni->first;
  }
  if (!same_keys) return where + ": " + nest.KindName() + ", expected " + spec.KindName();
  for (auto si = sm.begin(), ni = nm.begin(); si != sm.end(); ++si, ++ni) {
    std::string d = Describe(si->second, ni->second, batch_dim, path + "['" + si->first + "']", batch_size);
    if (!d.empty()) return d;
  }
  return "";
}

}  // namespace

std::string DescribeMismatch(const ArrayNest& spec, const ArrayNest& nest, int64_t batch_dim) {
  int64_t batch_size = -1;
  return Describe(spec, nest, batch_dim, "", &batch_size);
}

}  // namespace torchbeast
