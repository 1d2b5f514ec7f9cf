#include "core/array.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

namespace torchbeast {
namespace {

// An int32 array holding start, start + 1, ... in C order.
Array Iota(std::vector<int64_t> shape, int32_t start = 0) {
  Array a(DType::kInt32, std::move(shape));
  auto* p = static_cast<int32_t*>(a.data());
  std::iota(p, p + a.numel(), start);
  return a;
}

std::vector<int32_t> Values(const Array& a) {
  const auto* p = static_cast<const int32_t*>(a.data());
  return std::vector<int32_t>(p, p + a.numel());
}

TEST(ArrayTest, SizesForEveryDType) {
  const std::size_t sizes[] = {1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 4, 8};
  for (int32_t d = 0; d < kNumDTypes; ++d) {
    Array a(static_cast<DType>(d), {2, 3});
    EXPECT_EQ(a.numel(), 6);
    EXPECT_EQ(a.nbytes(), 6 * sizes[d]) << DTypeName(static_cast<DType>(d));
  }
  EXPECT_FALSE(IsValidDType(kNumDTypes));
  EXPECT_FALSE(IsValidDType(-1));
  EXPECT_STREQ(DTypeName(DType::kFloat16), "float16");
}

TEST(ArrayTest, NegativeDimensionThrows) { EXPECT_THROW(Array(DType::kUInt8, {2, -1}), InvalidArgument); }

TEST(ArrayTest, SizesThatOverflowThrow) {
  EXPECT_THROW(NumElements({int64_t{1} << 32, int64_t{1} << 32}), InvalidArgument);
  EXPECT_THROW(NumBytes(DType::kInt64, {int64_t{1} << 61}), InvalidArgument);
  EXPECT_EQ(NumBytes(DType::kInt64, {int64_t{1} << 59}), int64_t{1} << 62);
  EXPECT_EQ(NumBytes(DType::kInt64, {0, int64_t{1} << 62}), 0);
  EXPECT_THROW(Array(DType::kFloat64, {int64_t{1} << 62}), InvalidArgument);
}

TEST(ArrayTest, ZeroSizedAndScalar) {
  Array empty = Array::Zeros(DType::kFloat32, {0, 4});
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(empty.nbytes(), 0u);
  Array s = Array::Scalar<float>(DType::kFloat32, 2.5f);
  EXPECT_EQ(s.ndim(), 0);
  EXPECT_EQ(*static_cast<const float*>(s.data()), 2.5f);
}

TEST(ArrayTest, CopiesShareTheBufferAndCopyDuplicatesIt) {
  Array a = Iota({3});
  Array shared = a;
  Array copy = a.Copy();
  static_cast<int32_t*>(a.data())[0] = 42;
  EXPECT_EQ(Values(shared)[0], 42);
  EXPECT_EQ(Values(copy)[0], 0);
}

TEST(ArrayTest, ReshapeExpandSqueezeAreViews) {
  Array a = Iota({2, 3});
  Array r = a.Reshape({3, 2});
  EXPECT_EQ(r.data(), a.data());
  EXPECT_EQ(r.shape(), (std::vector<int64_t>{3, 2}));
  EXPECT_THROW(a.Reshape({4}), InvalidArgument);
  Array e = a.ExpandDims(/*dim=*/1);
  EXPECT_EQ(e.shape(), (std::vector<int64_t>{2, 1, 3}));
  EXPECT_THROW(a.ExpandDims(/*dim=*/3), InvalidArgument);
  Array f = a.ExpandDims(/*dim=*/0).SqueezeFront();
  EXPECT_EQ(f.shape(), a.shape());
  EXPECT_THROW(a.SqueezeFront(), InvalidArgument);
}

TEST(ArrayTest, ConcatenateAlongEveryDim) {
  Array a = Iota({2, 2}, /*start=*/0);   // [[0, 1], [2, 3]]
  Array b = Iota({2, 2}, /*start=*/10);  // [[10, 11], [12, 13]]
  Array c0 = Concatenate({&a, &b}, /*dim=*/0);
  EXPECT_EQ(c0.shape(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(Values(c0), (std::vector<int32_t>{0, 1, 2, 3, 10, 11, 12, 13}));
  Array c1 = Concatenate({&a, &b}, /*dim=*/1);
  EXPECT_EQ(c1.shape(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(Values(c1), (std::vector<int32_t>{0, 1, 10, 11, 2, 3, 12, 13}));
}

// Found by the fuzz target (fuzz/corpus/regression-zero-size-concatenate-slow): concatenating
// zero-sized arrays looped over their leading dimensions, here 2^40 times.
TEST(ArrayTest, ConcatenateZeroSizedArraysDoesNotLoopOverTheirLeadingDims) {
  const Array a = Array::Zeros(DType::kUInt8, {int64_t{1} << 40, 0});
  const Array out = Concatenate({&a, &a}, /*dim=*/1);
  EXPECT_EQ(out.shape(), (std::vector<int64_t>{int64_t{1} << 40, 0}));
  EXPECT_EQ(out.nbytes(), 0u);
}

TEST(ArrayTest, ConcatenateDifferentSizesAtDim) {
  Array a = Iota({1, 2, 2});
  Array b = Iota({1, 1, 2}, /*start=*/100);
  Array c = Concatenate({&a, &b}, /*dim=*/1);
  EXPECT_EQ(c.shape(), (std::vector<int64_t>{1, 3, 2}));
  EXPECT_EQ(Values(c), (std::vector<int32_t>{0, 1, 2, 3, 100, 101}));
}

TEST(ArrayTest, ConcatenateMismatchesThrow) {
  Array a = Iota({2, 2});
  Array wrong_shape = Iota({2, 3});
  Array wrong_dtype(DType::kFloat32, {2, 2});
  EXPECT_THROW(Concatenate({&a, &wrong_shape}, /*dim=*/0), InvalidArgument);
  EXPECT_NO_THROW(Concatenate({&a, &wrong_shape}, /*dim=*/1));
  EXPECT_THROW(Concatenate({&a, &wrong_dtype}, /*dim=*/0), InvalidArgument);
  EXPECT_THROW(Concatenate({&a}, /*dim=*/2), InvalidArgument);
  EXPECT_THROW(Concatenate({}, /*dim=*/0), InvalidArgument);
}

TEST(ArrayTest, SplitIsInverseOfConcatenate) {
  Array a = Iota({2, 5, 3});
  for (int64_t dim = 0; dim < 3; ++dim) {
    std::vector<int64_t> sizes = dim == 1 ? std::vector<int64_t>{1, 3, 1} : std::vector<int64_t>{1, a.shape()[dim] - 1};
    std::vector<Array> pieces = Split(a, dim, sizes);
    ASSERT_EQ(pieces.size(), sizes.size());
    for (std::size_t k = 0; k < sizes.size(); ++k) EXPECT_EQ(pieces[k].shape()[dim], sizes[k]);
    std::vector<const Array*> ptrs;
    for (const Array& p : pieces) ptrs.push_back(&p);
    EXPECT_TRUE(Concatenate(ptrs, dim).Equals(a)) << "dim " << dim;
  }
}

TEST(ArrayTest, SplitAlongLeadingDimsMakesViews) {
  Array a = Iota({1, 4, 2});
  std::vector<Array> pieces = Split(a, /*dim=*/1, /*sizes=*/{3, 1});
  EXPECT_EQ(pieces[0].data(), a.data());
  EXPECT_EQ(static_cast<const char*>(pieces[1].data()), static_cast<const char*>(a.data()) + 3 * 2 * 4);
  EXPECT_THROW(Split(a, /*dim=*/1, /*sizes=*/{3, 2}), InvalidArgument);
  EXPECT_THROW(Split(a, /*dim=*/3, /*sizes=*/{1}), InvalidArgument);
}

TEST(ArrayNestTest, ConcatenateAndSplitNests) {
  ArrayNest n1(ArrayNest::Map{{"a", Iota({1, 2})}, {"b", ArrayNest::Vector{Iota({1}), Iota({1, 1, 3})}}});
  ArrayNest n2(ArrayNest::Map{{"a", Iota({2, 2}, 5)}, {"b", ArrayNest::Vector{Iota({2}), Iota({2, 1, 3})}}});
  ArrayNest batch = ConcatenateNests({n1, n2}, /*dim=*/0);
  EXPECT_EQ(batch.map().at("a").leaf().shape(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(BatchSize(batch, /*dim=*/0), 3);
  std::vector<ArrayNest> parts = SplitNest(batch, /*dim=*/0, /*sizes=*/{1, 2});
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_TRUE(parts[1].map().at("a").leaf().Equals(n2.map().at("a").leaf()));
  EXPECT_TRUE(parts[0].map().at("b").vector()[1].leaf().Equals(n1.map().at("b").vector()[1].leaf()));

  ArrayNest other(ArrayNest::Map{{"a", Iota({1, 2})}});
  EXPECT_THROW(ConcatenateNests({n1, other}, /*dim=*/0), std::invalid_argument);
  EXPECT_THROW(BatchSize(ArrayNest(ArrayNest::Vector{}), /*dim=*/0), InvalidArgument);
  EXPECT_THROW(BatchSize(n1, /*dim=*/5), InvalidArgument);
}

TEST(ArrayNestTest, DescribeMismatchNamesThePath) {
  ArrayNest spec(ArrayNest::Map{{"frame", Array(DType::kUInt8, {1, 4})}, {"x", Array(DType::kFloat32, {1})}});
  EXPECT_EQ(DescribeMismatch(spec, spec, /*batch_dim=*/0), "");
  ArrayNest bigger(ArrayNest::Map{{"frame", Array(DType::kUInt8, {3, 4})}, {"x", Array(DType::kFloat32, {3})}});
  EXPECT_EQ(DescribeMismatch(spec, bigger, /*batch_dim=*/0), "");

  ArrayNest wrong_dtype(ArrayNest::Map{{"frame", Array(DType::kFloat32, {1, 4})}, {"x", Array(DType::kFloat32, {1})}});
  EXPECT_EQ(DescribeMismatch(spec, wrong_dtype, /*batch_dim=*/0), "at ['frame']: dtype float32, expected uint8");

  ArrayNest wrong_shape(ArrayNest::Map{{"frame", Array(DType::kUInt8, {1, 5})}, {"x", Array(DType::kFloat32, {1})}});
  EXPECT_NE(DescribeMismatch(spec, wrong_shape, /*batch_dim=*/0).find("at ['frame']: shape [1, 5]"), std::string::npos);

  ArrayNest ragged(ArrayNest::Map{{"frame", Array(DType::kUInt8, {1, 4})}, {"x", Array(DType::kFloat32, {2})}});
  EXPECT_NE(DescribeMismatch(spec, ragged, /*batch_dim=*/0).find("at ['x']: batch size 2"), std::string::npos);

  ArrayNest wrong_keys(ArrayNest::Map{{"frame", Array(DType::kUInt8, {1, 4})}});
  EXPECT_NE(DescribeMismatch(spec, wrong_keys, /*batch_dim=*/0).find("at the root: a map with keys [frame]"),
            std::string::npos);
}

TEST(ArrayNestTest, DescribeMismatchWithoutBatchDimWantsEqualShapes) {
  ArrayNest spec(ArrayNest::Map{{"frame", Array(DType::kUInt8, {1, 4})}, {"x", Array(DType::kFloat32, {})}});
  EXPECT_EQ(DescribeMismatch(spec, spec, /*batch_dim=*/-1), "");
  ArrayNest bigger(ArrayNest::Map{{"frame", Array(DType::kUInt8, {3, 4})}, {"x", Array(DType::kFloat32, {})}});
  EXPECT_EQ(DescribeMismatch(spec, bigger, /*batch_dim=*/-1), "at ['frame']: shape [3, 4], expected [1, 4]");
  ArrayNest wrong_dtype(ArrayNest::Map{{"frame", Array(DType::kUInt8, {1, 4})}, {"x", Array(DType::kFloat64, {})}});
  EXPECT_EQ(DescribeMismatch(spec, wrong_dtype, /*batch_dim=*/-1), "at ['x']: dtype float64, expected float32");
}

}  // namespace
}  // namespace torchbeast
