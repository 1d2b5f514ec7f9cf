#include "core/array_proto.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torchbeast {
namespace {

// An array of `dtype` whose bytes are 0, 1, 2, ... (mod 251).
Array Patterned(DType dtype, std::vector<int64_t> shape) {
  Array a(dtype, std::move(shape));
  auto* p = static_cast<uint8_t*>(a.data());
  for (std::size_t i = 0; i < a.nbytes(); ++i) p[i] = static_cast<uint8_t>(i % 251);
  return a;
}

TEST(ArrayProtoTest, RoundTripEveryDType) {
  for (int32_t d = 0; d < kNumDTypes; ++d) {
    const DType dtype = static_cast<DType>(d);
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{}, {0}, {3}, {2, 3, 4}}) {
      Array a = Patterned(dtype, shape);
      rpcenv::NDArray proto;
      ArrayToProto(a, &proto);
      EXPECT_EQ(proto.dtype(), d);
      EXPECT_TRUE(ArrayFromProto(proto).Equals(a)) << DTypeName(dtype) << " " << ShapeString(shape);
      // Through the wire format too.
      rpcenv::NDArray parsed;
      ASSERT_TRUE(parsed.ParseFromString(proto.SerializeAsString()));
      EXPECT_TRUE(ArrayFromProto(&parsed).Equals(a)) << DTypeName(dtype) << " " << ShapeString(shape);
    }
  }
}

TEST(ArrayProtoTest, StealingKeepsTheBytesAlive) {
  Array a = Patterned(DType::kFloat64, {100});
  Array b(DType::kBool, {});
  {
    rpcenv::NDArray proto;
    ArrayToProto(a, &proto);
    b = ArrayFromProto(&proto);
    EXPECT_TRUE(proto.data().empty());
  }
  EXPECT_TRUE(b.Equals(a));
}

TEST(ArrayProtoTest, BadMessagesThrow) {
  rpcenv::NDArray proto;
  proto.set_dtype(static_cast<rpcenv::DType>(kNumDTypes));
  EXPECT_THROW(ArrayFromProto(proto), InvalidArgument);

  ArrayToProto(Patterned(DType::kInt32, {2, 2}), &proto);
  proto.mutable_data()->pop_back();
  EXPECT_THROW(ArrayFromProto(proto), InvalidArgument);
  EXPECT_THROW(ArrayFromProto(&proto), InvalidArgument);

  rpcenv::ArrayNest unset;
  EXPECT_THROW(NestFromProto(unset), InvalidArgument);
}

// Shapes come from peers: their element count and byte size are computed without overflow,
// and nothing is allocated before the byte length matches.
TEST(ArrayProtoTest, OverflowingShapesAreInvalidArgument) {
  auto expect_invalid = [](std::vector<int64_t> shape, DType dtype, const std::string& message) {
    rpcenv::NDArray proto;
    proto.set_dtype(static_cast<rpcenv::DType>(dtype));
    proto.mutable_shape()->Assign(shape.begin(), shape.end());
    proto.set_data("abcd");
    try {
      ArrayFromProto(proto);
      ADD_FAILURE() << "expected InvalidArgument for " << ShapeString(shape);
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
    EXPECT_THROW(ArrayFromProto(&proto), InvalidArgument);
  };
  // 2^32 * 2^32 = 2^64 elements wraps to 0 in int64 arithmetic.
  expect_invalid({int64_t{1} << 32, int64_t{1} << 32}, DType::kUInt8, "more elements than int64 can count");
  // 2^62 elements fit, 2^65 bytes do not.
  expect_invalid({int64_t{1} << 62}, DType::kFloat64, "more bytes than int64 can count");
  // A huge but countable shape with 4 bytes: a mismatch, and no allocation of 2^40 bytes.
  expect_invalid({int64_t{1} << 40}, DType::kUInt8, "needs 1099511627776 bytes, got 4");
  expect_invalid({2, -1}, DType::kUInt8, "negative dimension");
  // A zero dimension makes the rest irrelevant only when it does not overflow first.
  expect_invalid({0, int64_t{1} << 62}, DType::kFloat64, "needs 0 bytes, got 4");
}

// Found by the fuzz target (fuzz/corpus/seed-bad-zero-size-huge-dims, regression-*): a zero-sized
// array with huge dimensions decoded, then overflowed Split's strides (UBSan) and Concatenate's
// sizes; NumPy refuses such shapes too. With its zero dimensions counted as 1 an array must fit
// in a message.
TEST(ArrayProtoTest, ZeroSizedShapesBiggerThanAMessageAreInvalidArgument) {
  auto decode = [](std::vector<int64_t> shape, DType dtype) {
    rpcenv::NDArray proto;
    proto.set_dtype(static_cast<rpcenv::DType>(dtype));
    proto.mutable_shape()->Assign(shape.begin(), shape.end());
    Array copied = ArrayFromProto(proto);
    Array moved = ArrayFromProto(&proto);
    EXPECT_TRUE(copied.Equals(moved));
    return copied;
  };
  auto expect_too_big = [&decode](std::vector<int64_t> shape, DType dtype) {
    try {
      decode(shape, dtype);
      ADD_FAILURE() << "expected InvalidArgument for " << ShapeString(shape);
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("is too big: with its zero dimensions counted as 1"), std::string::npos)
          << e.what();
    }
  };
  const int64_t big = int64_t{1} << 62;
  expect_too_big({0, big, big}, DType::kFloat32);  // 2^124 elements without the zero.
  expect_too_big({big, 0, big}, DType::kUInt8);
  expect_too_big({0, big}, DType::kUInt8);
  expect_too_big({int64_t{1} << 31, 0}, DType::kUInt8);
  expect_too_big({0, int64_t{1} << 29}, DType::kFloat32);  // 2^31 bytes.
  EXPECT_EQ(decode({0, (int64_t{1} << 31) - 1}, DType::kUInt8).shape(),
            (std::vector<int64_t>{0, (int64_t{1} << 31) - 1}));
  EXPECT_EQ(decode({3, 0, int64_t{1} << 20}, DType::kFloat64).numel(), 0);
  EXPECT_EQ(decode({0}, DType::kInt64).nbytes(), 0u);
}

TEST(ArrayProtoTest, NestRoundTrip) {
  ArrayNest n(ArrayNest::Map{
      {"frame", Patterned(DType::kUInt8, {64, 64, 3})},
      {"state", ArrayNest::Vector{Patterned(DType::kFloat32, {2, 1, 8}), Patterned(DType::kFloat16, {2, 1, 8})}},
      {"empty", ArrayNest::Vector{}},
      {"nested", ArrayNest::Map{{"z", Patterned(DType::kInt64, {1})}}},
  });
  rpcenv::ArrayNest proto;
  NestToProto(n, &proto);
  rpcenv::ArrayNest parsed;
  ASSERT_TRUE(parsed.ParseFromString(proto.SerializeAsString()));
  for (const ArrayNest& back : {NestFromProto(parsed), NestFromProto(&parsed)}) {
    ASSERT_TRUE(back.is_map());
    EXPECT_EQ(back.map().size(), 4u);
    EXPECT_TRUE(back.map().at("empty").is_vector());
    EXPECT_TRUE(back.map().at("empty").vector().empty());
    std::vector<Array> want = n.flatten();
    std::vector<Array> got = back.flatten();
    ASSERT_EQ(want.size(), got.size());
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(got[i].Equals(want[i])) << i;
  }
}

}  // namespace
}  // namespace torchbeast
