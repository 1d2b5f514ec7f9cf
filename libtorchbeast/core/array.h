// Array: a typed, contiguous (C-order) n-d array whose bytes live in a shared buffer, and
// ArrayNest, the nests of arrays that the core moves around (observations, rollouts, states).
//
// Copying an Array is cheap and shares the buffer (like a NumPy view); Copy() duplicates it.
// The core never interprets element values except to zero-fill; it concatenates, splits and
// reshapes by bytes, so it stays independent of PyTorch and NumPy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/errors.h"
#include "nest/nest.h"

namespace torchbeast {

// Element types. The values are part of the wire format (rpcenv.proto): do not renumber.
enum class DType : int32_t {
  kBool = 0,
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kUInt16 = 4,
  kInt32 = 5,
  kUInt32 = 6,
  kInt64 = 7,
  kUInt64 = 8,
  kFloat16 = 9,
  kFloat32 = 10,
  kFloat64 = 11,
};
inline constexpr int32_t kNumDTypes = 12;

bool IsValidDType(int32_t value);
// Bytes per element: 1 for bool.
std::size_t ItemSize(DType dtype);
// The NumPy name: "bool", "uint8", ..., "float16".
const char* DTypeName(DType dtype);
// The element count and byte size of an array of `dtype` and `shape`, computed without
// overflow: throws InvalidArgument for a negative dimension or a size that does not fit in
// int64 (shapes come from peers, so they are never trusted).
int64_t NumElements(const std::vector<int64_t>& shape);
int64_t NumBytes(DType dtype, const std::vector<int64_t>& shape);
// "[2, 3]".
std::string ShapeString(const std::vector<int64_t>& shape);

class Array {
 public:
  // A new, uninitialized array. Throws InvalidArgument for a negative dimension or a size
  // that overflows (see NumBytes).
  Array(DType dtype, std::vector<int64_t> shape);
  // A view of `data`, kept alive by `owner` (which may share ownership of a bigger buffer).
  Array(DType dtype, std::vector<int64_t> shape, std::shared_ptr<void> owner, void* data);

  static Array Zeros(DType dtype, std::vector<int64_t> shape);
  // A 0-d array holding `value`; T must match `dtype`'s size.
  template <typename T>
  static Array Scalar(DType dtype, T value) {
    Array a(dtype, {});
    if (sizeof(T) != a.nbytes()) throw InvalidArgument("Array::Scalar: size mismatch");
    *static_cast<T*>(a.data()) = value;
    return a;
  }

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t ndim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * ItemSize(dtype_); }
  void* data() { return data_; }
  const void* data() const { return data_; }
  // Keeps data() alive; hand it to whoever must outlive this Array (e.g. a NumPy base object).
  const std::shared_ptr<void>& owner() const { return owner_; }

  // A view with a new shape of the same number of elements.
  Array Reshape(std::vector<int64_t> shape) const;
  // A view with a dimension of size 1 inserted at `dim` (0 <= dim <= ndim()).
  Array ExpandDims(int64_t dim) const;
  // A view with the leading dimension removed; requires shape()[0] == 1.
  Array SqueezeFront() const;
  // A deep copy.
  Array Copy() const;
  // True when the dtypes, shapes and bytes are equal.
  bool Equals(const Array& other) const;

 private:
  DType dtype_ = DType::kBool;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
};

// Concatenates along `dim`; every array must have the same dtype and the same shape except at
// `dim`. Throws InvalidArgument naming the first mismatch.
Array Concatenate(const std::vector<const Array*>& arrays, int64_t dim);

// Splits along `dim` into pieces of the given sizes, which must add up to shape()[dim].
// The pieces are views when every dimension before `dim` has size 1, copies otherwise.
std::vector<Array> Split(const Array& array, int64_t dim, const std::vector<int64_t>& sizes);

using ArrayNest = nest::Nest<Array>;

// Concatenates nests of equal structure leaf by leaf along `dim`.
ArrayNest ConcatenateNests(const std::vector<ArrayNest>& nests, int64_t dim);

// Splits every leaf along `dim` into pieces of `sizes`: one nest per piece.
std::vector<ArrayNest> SplitNest(const ArrayNest& nest, int64_t dim, const std::vector<int64_t>& sizes);

// The size of the first leaf along `dim`. Throws InvalidArgument for a nest without leaves or
// a first leaf with too few dimensions.
int64_t BatchSize(const ArrayNest& nest, int64_t dim);

// Checks that `nest` has the structure and dtypes of `spec` and the same shapes except at
// `batch_dim`, and that its leaves agree on their size at `batch_dim`; with batch_dim = -1,
// that every shape is equal. Returns "" when they do, otherwise a description such as
// "at ['frame']: dtype float32, expected uint8".
std::string DescribeMismatch(const ArrayNest& spec, const ArrayNest& nest, int64_t batch_dim);

}  // namespace torchbeast
