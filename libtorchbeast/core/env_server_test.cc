#include "core/env_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/env_client.h"
#include "core/test_util.h"
#include "rpcenv.grpc.pb.h"

namespace torchbeast {
namespace {

using testing::Action;
using testing::CountingEnv;
using testing::FrameValue;
using testing::TempSocket;

EnvFactory Counting(int32_t episode_length, bool truncate = false, int64_t fail_at_step = -1) {
  return [=]() -> std::unique_ptr<Env> {
    return std::make_unique<CountingEnv>(/*id=*/0, episode_length, truncate, fail_at_step);
  };
}

// Streams a fixed list of records (the first from Initial()), whatever the actions.
class ScriptedEnv : public Env {
 public:
  explicit ScriptedEnv(std::vector<EnvStep> script) : script_(std::move(script)) {}
  EnvStep Initial() override { return script_.at(0); }
  EnvStep Step(const ArrayNest& /*action*/) override { return script_.at(next_++); }

 private:
  const std::vector<EnvStep> script_;
  std::size_t next_ = 1;
};

ArrayNest Frame(uint8_t value) {
  Array frame = Array::Zeros(DType::kUInt8, {2, 3});
  for (int i = 0; i < 6; ++i) static_cast<uint8_t*>(frame.data())[i] = value;
  return ArrayNest(ArrayNest::Map{{"frame", frame}, {"pos", Array::Scalar<double>(DType::kFloat64, value / 4.0)}});
}

EnvStep Record(uint8_t frame, float reward, bool done, bool truncated, int32_t episode_step, float episode_return,
               std::optional<ArrayNest> final_observation = std::nullopt) {
  EnvStep step;
  step.observation = Frame(frame);
  step.reward = reward;
  step.done = done;
  step.truncated = truncated;
  step.episode_step = episode_step;
  step.episode_return = episode_return;
  step.final_observation = std::move(final_observation);
  return step;
}

void ExpectSameNest(const ArrayNest& expected, const ArrayNest& actual) {
  ASSERT_EQ(DescribeMismatch(expected, actual, /*batch_dim=*/-1), "");
  const std::vector<Array> e = expected.flatten(), a = actual.flatten();
  for (std::size_t i = 0; i < e.size(); ++i) EXPECT_TRUE(e[i].Equals(a[i])) << "leaf " << i;
}

void ExpectSameStep(const EnvStep& expected, const EnvStep& actual) {
  ExpectSameNest(expected.observation, actual.observation);
  EXPECT_EQ(expected.reward, actual.reward);
  EXPECT_EQ(expected.done, actual.done);
  EXPECT_EQ(expected.truncated, actual.truncated);
  EXPECT_EQ(expected.episode_step, actual.episode_step);
  EXPECT_EQ(expected.episode_return, actual.episode_return);
  ASSERT_EQ(expected.final_observation.has_value(), actual.final_observation.has_value());
  if (expected.final_observation) ExpectSameNest(*expected.final_observation, *actual.final_observation);
}

// The records deliberately break the episode rules (a first step without done, truncated
// without done, final observations without truncated or of another structure): the server
// applies none of them.
TEST(EnvServerTest, EveryFieldOfEveryStepArrivesUnchanged) {
  const std::vector<EnvStep> script = {
      Record(/*frame=*/7, /*reward=*/0.5f, /*done=*/false, /*truncated=*/false, /*episode_step=*/3,
             /*episode_return=*/1.5f),
      Record(1, -2.25f, false, true, 4, -0.75f, /*final_observation=*/Frame(9)),
      Record(0, 1.0f, true, false, 5, 0.25f),
      Record(2, 3.0f, true, true, -1, 1e6f, ArrayNest(Array::Zeros(DType::kInt16, {4}))),
      Record(3, 0.0f, false, false, 0, 0.0f, Frame(5)),
      Record(4, 0.0f, false, false, 0, 0.0f, ArrayNest(ArrayNest::Vector{})),
  };
  EnvServer server([&script]() -> std::unique_ptr<Env> { return std::make_unique<ScriptedEnv>(script); },
                   TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  ExpectSameStep(script[0], client.Connect());
  for (std::size_t i = 1; i < script.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    ExpectSameStep(script[i], client.Step(Action(0)));
  }
  client.Close();
}

TEST(EnvServerTest, TheActionArrivesUnchanged) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  client.Connect();
  EXPECT_EQ(client.Step(Action(/*value=*/41)).reward, 42.0f);  // CountingEnv: 1 + action.
  EXPECT_EQ(client.Step(Action(/*value=*/-3)).reward, -2.0f);
}

TEST(EnvServerTest, EnvErrorsReachTheClient) {
  EnvServer server(Counting(/*episode_length=*/100, /*truncate=*/false, /*fail_at_step=*/2), TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  client.Connect();
  client.Step(Action(0));
  client.Step(Action(0));
  try {
    client.Step(Action(0));
    FAIL() << "expected EnvError";
  } catch (const EnvError& e) {
    EXPECT_NE(std::string(e.what()).find("failing as asked at step 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(client.Step(Action(0)), Error);  // No stream any more.
  EXPECT_NO_THROW(client.Connect());            // A new stream gets a new env.
}

TEST(EnvServerTest, BadActionIsInvalidArgument) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  client.Connect();
  // CountingEnv reads the action as a leaf: a list fails in the env (ABORTED -> EnvError).
  EXPECT_THROW(client.Step(ArrayNest(ArrayNest::Vector{})), EnvError);
}

// Raw bytes sent as an Action message, to send what does not parse.
struct RawAction {
  std::string bytes;
};

}  // namespace
}  // namespace torchbeast

namespace grpc {
template <>
class SerializationTraits<torchbeast::RawAction, void> {
 public:
  static Status Serialize(const torchbeast::RawAction& msg, ByteBuffer* buffer, bool* own_buffer) {
    Slice slice(msg.bytes);
    ByteBuffer tmp(&slice, 1);
    buffer->Swap(&tmp);
    *own_buffer = true;
    return Status::OK;
  }
  static Status Deserialize(ByteBuffer* /*buffer*/, torchbeast::RawAction* /*msg*/) {
    return Status(StatusCode::INTERNAL, "not used");
  }
};
}  // namespace grpc

namespace torchbeast {
namespace {

// Opens a stream, reads the first step, sends `bytes` as an Action and returns the status.
grpc::Status SendRawAction(const std::string& address, const std::string& bytes) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  const grpc::internal::RpcMethod method("/torchbeast.rpcenv.StreamingEnv/StreamingEnv",
                                         grpc::internal::RpcMethod::BIDI_STREAMING, channel);
  std::unique_ptr<grpc::ClientReaderWriter<RawAction, rpcenv::Step>> stream(
      grpc::internal::ClientReaderWriterFactory<RawAction, rpcenv::Step>::Create(channel.get(), method, &context));
  rpcenv::Step step;
  EXPECT_TRUE(stream->Read(&step));
  stream->Write(RawAction{bytes});
  stream->WritesDone();
  while (stream->Read(&step)) {
  }
  return stream->Finish();
}

TEST(EnvServerTest, AnActionThatDoesNotParseIsInvalidArgumentWithAMessage) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Start();
  // Field 1 (action), length-delimited, claiming 100 bytes but holding 2.
  const grpc::Status status = SendRawAction(server.address(), std::string("\x0a\x64\x01\x02", 4));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("the Action message does not parse"), std::string::npos)
      << status.error_message();
}

TEST(EnvServerTest, AnActionWithAnOverflowingShapeIsInvalidArgument) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Start();
  rpcenv::Action action;
  rpcenv::NDArray* array = action.mutable_action()->mutable_array();
  array->set_dtype(rpcenv::INT64);
  array->add_shape(int64_t{1} << 32);
  array->add_shape(int64_t{1} << 32);
  const grpc::Status status = SendRawAction(server.address(), action.SerializeAsString());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("more elements than int64 can count"), std::string::npos)
      << status.error_message();
}

TEST(EnvServerTest, AnActionOverTheLimitIsResourceExhausted) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Start();
  rpcenv::Action action;
  rpcenv::NDArray* array = action.mutable_action()->mutable_array();
  array->set_dtype(rpcenv::UINT8);
  array->add_shape(2 * EnvServer::kMaxActionBytes);
  array->set_data(std::string(2 * EnvServer::kMaxActionBytes, 'x'));
  const grpc::Status status = SendRawAction(server.address(), action.SerializeAsString());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST(EnvServerTest, MaxStreamsRefusesFurtherStreamsBeforeMakingAnEnv) {
  std::atomic<int> envs{0};
  EnvServer server(
      [&envs]() -> std::unique_ptr<Env> {
        ++envs;
        return std::make_unique<CountingEnv>(/*id=*/0, /*episode_length=*/100);
      },
      TempSocket("env"), /*max_streams=*/1);
  server.Start();
  EnvClient first(server.address());
  first.Connect();
  EnvClient second(server.address());
  try {
    second.Connect();
    FAIL() << "expected PeerError";
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("serves at most 1 stream(s) at a time"), std::string::npos) << e.what();
  }
  EXPECT_EQ(envs, 1);
  first.Close();
  // The slot is free once the first stream's handler has returned.
  for (int i = 0;; ++i) {
    try {
      second.Connect();
      break;
    } catch (const PeerError&) {
      ASSERT_LT(i, 100);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  EXPECT_EQ(FrameValue(second.Step(Action(0))), 1);
}

TEST(EnvServerTest, ATcpPortAlreadyServedCannotBeBound) {
  EnvServer first(Counting(/*episode_length=*/3), "127.0.0.1:0");
  first.Start();
  ASSERT_GT(first.port(), 0);
  EnvServer second(Counting(/*episode_length=*/3), "127.0.0.1:" + std::to_string(first.port()));
  EXPECT_THROW(second.Start(), Error);
}

TEST(EnvServerTest, ManyClientsGetTheirOwnEnvs) {
  EnvServer server(Counting(/*episode_length=*/1000), TempSocket("env"));
  server.Start();
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int c = 0; c < 8; ++c) {
    threads.emplace_back([&] {
      EnvClient client(server.address());
      client.Connect();
      for (int i = 1; i <= 50; ++i)
        if (FrameValue(client.Step(Action(0))) != i) ++wrong;
      client.Close();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong, 0);
}

TEST(EnvServerTest, TcpWithPortZero) {
  EnvServer server(Counting(/*episode_length=*/3), "127.0.0.1:0");
  server.Start();
  ASSERT_GT(server.port(), 0);
  EnvClient client("127.0.0.1:" + std::to_string(server.port()));
  EXPECT_TRUE(client.Connect().done);
  EXPECT_EQ(FrameValue(client.Step(Action(0))), 1);
}

TEST(EnvServerTest, NoServerIsRpcError) {
  EnvClient client(TempSocket("nobody"));
  EXPECT_THROW(client.Connect(), RpcError);
}

TEST(EnvServerTest, StopEndsRunAndOpenStreams) {
  EnvServer server(Counting(/*episode_length=*/1000), TempSocket("env"));
  std::thread runner([&server] { server.Run(); });
  EnvClient client(server.address());
  // Run() may not have bound yet: retry briefly.
  for (int i = 0;; ++i) {
    try {
      client.Connect();
      break;
    } catch (const RpcError&) {
      ASSERT_LT(i, 100);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  client.Step(Action(0));
  server.Stop();
  runner.join();
  EXPECT_THROW(client.Step(Action(0)), RpcError);
  server.Stop();  // Again: nothing happens.
}

TEST(EnvServerTest, StopBeforeStartAndCancelledClient) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Stop();
  server.Run();  // Returns at once.
  EnvClient client(TempSocket("nobody"));
  client.Cancel();
  EXPECT_THROW(client.Connect(), ClosedError);
}

TEST(EnvServerTest, BindFailureThrows) {
  EnvServer server(Counting(/*episode_length=*/3), "unix:/nonexistent_dir_ltb/socket");
  EXPECT_THROW(server.Start(), Error);
}

}  // namespace
}  // namespace torchbeast
