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
