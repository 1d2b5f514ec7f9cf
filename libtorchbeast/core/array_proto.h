// Conversions between Array / ArrayNest and their protobuf messages (rpcenv.proto).
#pragma once

#include "core/array.h"
#include "rpcenv.pb.h"

namespace torchbeast {

// Copies the array's bytes into `proto`.
void ArrayToProto(const Array& array, rpcenv::NDArray* proto);
// Copies the bytes out of `proto`. Throws InvalidArgument for an unknown dtype, a byte count
// that does not match the shape, or a zero-sized shape that would be bigger than a message
// (2^31 - 1 bytes) with its zero dimensions counted as 1.
Array ArrayFromProto(const rpcenv::NDArray& proto);
// Takes the bytes out of `proto` without copying them (the Array keeps them alive).
Array ArrayFromProto(rpcenv::NDArray* proto);

void NestToProto(const ArrayNest& nest, rpcenv::ArrayNest* proto);
// Throws InvalidArgument for an ArrayNest message whose oneof is unset.
ArrayNest NestFromProto(const rpcenv::ArrayNest& proto);
// Takes the array bytes out of `proto` without copying them.
ArrayNest NestFromProto(rpcenv::ArrayNest* proto);

}  // namespace torchbeast
