// libFuzzer target over the decoding of what peers send: each input is one serialized message,
// read both as an rpcenv.Step (env server -> actor) and as an rpcenv.Action (actor -> env
// server). Both start with an ArrayNest in field 1, so one corpus serves both.
//
// Step: parsed like gRPC's client does, decoded by EnvClient::FromProto, then put through what
// an ActorPool does to a first step (its observation becomes the run's spec, DescribeBadStep,
// [T, B] dims added, rollouts and batches concatenated and split). Action: parsed through gRPC's
// ByteBuffer path as EnvServer does, then NestFromProto. Besides the sanitizers, the target
// checks that the copying and the moving decoders agree, that a decoded nest survives a round
// trip through the wire format, and that batching then splitting gives back what went in.
//
// TB_FUZZ_REPORT=1 prints one line per input saying how each decoder took it (the test replays
// the corpus with it and checks that each seed is taken as its name says). TB_FUZZ_CANARY=1
// makes a Step whose observation has the key "fuzz-canary" abort: the test uses it to show that
// a crash in here fails the run.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>  // GenericDeserialize, as EnvServer reads an Action.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/array_proto.h"
#include "core/env_client.h"
#include "core/step_check.h"
#include "rpcenv.pb.h"

namespace torchbeast {
namespace {

bool g_canary = false;
bool g_report = false;

// An invariant of the decoding code broke: say which and crash, so libFuzzer keeps the input.
#define FUZZ_CHECK(cond, what)                                                                                 \
  do {                                                                                                         \
    if (!(cond)) {                                                                                             \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n", __FILE__, __LINE__, std::string(what).c_str()); \
      std::abort();                                                                                            \
    }                                                                                                          \
  } while (false)

// Same structure, dtypes, shapes and bytes.
bool SameNest(const ArrayNest& a, const ArrayNest& b) {
  if (a.value().index() != b.value().index()) return false;
  if (a.is_leaf()) return a.leaf().Equals(b.leaf());
  if (a.is_vector()) {
    if (a.vector().size() != b.vector().size()) return false;
    for (std::size_t i = 0; i < a.vector().size(); ++i) {
      if (!SameNest(a.vector()[i], b.vector()[i])) return false;
    }
    return true;
  }
  if (a.map().size() != b.map().size()) return false;
  for (auto ia = a.map().begin(), ib = b.map().begin(); ia != a.map().end(); ++ia, ++ib) {
    if (ia->first != ib->first || !SameNest(ia->second, ib->second)) return false;
  }
  return true;
}

ArrayNest ZerosLike(const ArrayNest& nest) {
  return nest.map([](const Array& a) { return Array::Zeros(a.dtype(), a.shape()); });
}

ArrayNest AddTimeAndBatchDims(const ArrayNest& nest) {
  return nest.map([](const Array& a) { return a.ExpandDims(0).ExpandDims(0); });
}

// The copying decoder must accept exactly what the moving one accepts, with the same result,
// and what was decoded must come back unchanged through NestToProto and the wire.
void CheckDecoders(const rpcenv::ArrayNest& untouched, const ArrayNest* moved) {
  std::string copy_error;
  try {
    ArrayNest copied = NestFromProto(untouched);
    FUZZ_CHECK(moved != nullptr, "the copying decoder accepted a nest the moving one rejected");
    FUZZ_CHECK(SameNest(copied, *moved), "the copying and moving decoders disagree");
  } catch (const InvalidArgument& e) {
    FUZZ_CHECK(moved == nullptr, std::string("the copying decoder rejected a nest the moving one took: ") + e.what());
    return;
  }
  rpcenv::ArrayNest proto;
  NestToProto(*moved, &proto);
  rpcenv::ArrayNest reparsed;
  FUZZ_CHECK(reparsed.ParseFromString(proto.SerializeAsString()), "a re-encoded nest does not parse");
  FUZZ_CHECK(SameNest(NestFromProto(&reparsed), *moved), "a nest changed through NestToProto and back");
}

// Every leaf split along each of its dims into one piece and concatenated with itself (the shape
// arithmetic of batching, whatever dim a batcher uses).
void CheckShapeArithmetic(const ArrayNest& nest) {
  nest.for_each([](const Array& a) {
    for (int64_t dim = 0; dim < a.ndim(); ++dim) {
      const std::vector<Array> pieces = Split(a, dim, /*sizes=*/{a.shape()[dim]});
      FUZZ_CHECK(pieces.size() == 1 && pieces[0].Equals(a), "a one-piece Split changed the array");
      const Array twice = Concatenate({&a, &a}, dim);
      FUZZ_CHECK(twice.nbytes() == 2 * a.nbytes(), "Concatenate of an array with itself has the wrong size");
    }
  });
}

// What ActorPool::Stream does with a stream's first step when the run has no spec yet.
// Returns DescribeBadStep's verdict.
std::string CheckLikeAnActor(const EnvStep& step) {
  const ArrayNest spec = ZerosLike(step.observation);
  FUZZ_CHECK(SameNest(ZerosLike(spec), spec), "ZerosLike is not idempotent");
  int64_t bytes = 0;
  step.observation.for_each([&bytes](const Array& a) { bytes += static_cast<int64_t>(a.nbytes()); });
  FUZZ_CHECK(ObservationBytes(spec) == bytes, "ObservationBytes disagrees with the leaves' nbytes");

  const std::string problem = DescribeBadStep(spec, step);
  // The spec is made from this observation, so only the other fields can be wrong.
  EnvStep own = step;
  own.final_observation.reset();
  own.reward = 0.0f;
  own.episode_return = 0.0f;
  FUZZ_CHECK(DescribeBadStep(spec, own).empty(), "an observation does not fit the spec made from it");
  if (step.final_observation) {
    DescribeBadStep(ZerosLike(*step.final_observation), step);  // Arbitrary spec against arbitrary nest.
  }
  if (!problem.empty()) return problem;  // The actor drops the connection here.

  // A rollout of two steps along T, then a batch of two rollouts along B, then split again.
  const ArrayNest one = AddTimeAndBatchDims(step.observation);
  const ArrayNest rollout = ConcatenateNests({one, AddTimeAndBatchDims(spec)}, /*dim=*/0);
  const ArrayNest batch = ConcatenateNests({rollout, rollout}, /*dim=*/1);
  FUZZ_CHECK(DescribeMismatch(rollout, batch, /*batch_dim=*/1).empty(), "a batch does not match its rollouts");
  const std::vector<ArrayNest> pieces = SplitNest(batch, /*dim=*/1, /*sizes=*/{1, 1});
  FUZZ_CHECK(pieces.size() == 2 && SameNest(pieces[0], rollout) && SameNest(pieces[1], rollout),
             "splitting a batch does not give back its rollouts");
  const std::vector<ArrayNest> steps = SplitNest(rollout, /*dim=*/0, /*sizes=*/{1, 1});
  FUZZ_CHECK(steps.size() == 2 && SameNest(steps[0], one), "splitting a rollout does not give back its first step");
  return "";
}

// How the input went as a Step: "does not parse", "rejected: ...", "bad step: ..." or "ok".
std::string FuzzStep(const uint8_t* data, std::size_t size) {
  rpcenv::Step proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return "does not parse";  // gRPC ends the stream.
  const rpcenv::Step untouched = proto;
  EnvStep step;
  try {
    step = EnvClient::FromProto(&proto);
  } catch (const PeerError& e) {
    // Which part was rejected: the copying decoder must reject it too.
    bool rejected = false;
    try {
      NestFromProto(untouched.observation());
      if (untouched.has_final_observation()) NestFromProto(untouched.final_observation());
    } catch (const InvalidArgument&) {
      rejected = true;
    }
    FUZZ_CHECK(rejected, "EnvClient::FromProto rejected a step the copying decoder takes");
    return std::string("rejected: ") + e.what();
  }
  FUZZ_CHECK(step.reward == untouched.reward() || step.reward != step.reward, "reward changed");
  FUZZ_CHECK(step.final_observation.has_value() == untouched.has_final_observation(), "final_observation lost");
  CheckDecoders(untouched.observation(), &step.observation);
  if (step.final_observation) CheckDecoders(untouched.final_observation(), &*step.final_observation);
  if (g_canary && step.observation.is_map() && step.observation.map().count("fuzz-canary") > 0) {
    FUZZ_CHECK(false, "the canary step (TB_FUZZ_CANARY is set)");
  }
  CheckShapeArithmetic(step.observation);
  const std::string problem = CheckLikeAnActor(step);
  return problem.empty() ? "ok" : "bad step: " + problem;
}

// How the input went as an Action: "does not parse", "rejected: ..." or "ok".
std::string FuzzAction(const uint8_t* data, std::size_t size) {
  // The bytes as gRPC hands them to EnvServer's deserializer (core/env_server.cc).
  grpc::Slice slice(data, size);
  grpc::ByteBuffer buffer(&slice, 1);
  rpcenv::Action proto;
  if (!grpc::GenericDeserialize<grpc::ProtoBufferReader, rpcenv::Action>(&buffer, &proto).ok()) {
    return "does not parse";
  }
  const rpcenv::Action untouched = proto;
  try {
    ArrayNest action = NestFromProto(proto.mutable_action());
    CheckDecoders(untouched.action(), &action);
    return "ok";
  } catch (const InvalidArgument& e) {
    CheckDecoders(untouched.action(), nullptr);
    return std::string("rejected: ") + e.what();
  }
}

}  // namespace
}  // namespace torchbeast

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const char* canary = std::getenv("TB_FUZZ_CANARY");
  torchbeast::g_canary = canary != nullptr && std::string(canary) == "1";
  const char* report = std::getenv("TB_FUZZ_REPORT");
  torchbeast::g_report = report != nullptr && std::string(report) == "1";
  grpc_init();  // For grpc::Slice and ByteBuffer; never shut down.
  // protobuf logs every map key that is not UTF-8; such a message does not parse, which is all
  // that matters here.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string step = torchbeast::FuzzStep(data, size);
  const std::string action = torchbeast::FuzzAction(data, size);
  if (torchbeast::g_report) std::fprintf(stderr, "[tb-fuzz] step: %s | action: %s\n", step.c_str(), action.c_str());
  return 0;
}
