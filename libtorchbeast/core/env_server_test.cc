#include "core/env_server.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "core/env_client.h"
#include "core/test_util.h"

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

TEST(EnvServerTest, StreamsStepsAndResetsAtEpisodeEnd) {
  EnvServer server(Counting(/*episode_length=*/3), TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  EnvStep first = client.Connect();
  EXPECT_TRUE(first.done);
  EXPECT_EQ(first.episode_step, 0);
  EXPECT_EQ(FrameValue(first), 0);
  EXPECT_EQ(first.observation.map().at("frame").leaf().shape(), (std::vector<int64_t>{2, 3}));

  EnvStep s1 = client.Step(Action(/*value=*/0));
  EXPECT_FALSE(s1.done);
  EXPECT_EQ(s1.episode_step, 1);
  EXPECT_EQ(s1.reward, 1.0f);
  EXPECT_EQ(FrameValue(s1), 1);
  client.Step(Action(/*value=*/1));  // reward 2
  EnvStep s3 = client.Step(Action(/*value=*/0));
  EXPECT_TRUE(s3.done);
  EXPECT_FALSE(s3.truncated);
  EXPECT_EQ(s3.episode_step, 3);         // The episode that ended.
  EXPECT_EQ(s3.episode_return, 4.0f);    // 1 + 2 + 1.
  EXPECT_EQ(FrameValue(s3), 0);          // The new episode's first observation.
  EnvStep s4 = client.Step(Action(/*value=*/0));
  EXPECT_EQ(s4.episode_step, 1);
  EXPECT_EQ(s4.episode_return, 1.0f);
  client.Close();
  server.Stop();
}

TEST(EnvServerTest, TruncationIsReportedSeparately) {
  EnvServer server(Counting(/*episode_length=*/2, /*truncate=*/true), TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  client.Connect();
  client.Step(Action(0));
  EnvStep end = client.Step(Action(0));
  EXPECT_TRUE(end.done);
  EXPECT_TRUE(end.truncated);
  EnvStep next = client.Step(Action(0));
  EXPECT_FALSE(next.done);
  EXPECT_FALSE(next.truncated);
}

TEST(EnvServerTest, FinalObservationComesOnlyWithTruncation) {
  EnvServer truncating(Counting(/*episode_length=*/2, /*truncate=*/true), TempSocket("t"));
  EnvServer terminating(Counting(/*episode_length=*/2), TempSocket("e"));
  truncating.Start();
  terminating.Start();
  EnvClient client(truncating.address());
  EXPECT_FALSE(client.Connect().final_observation.has_value());
  for (int episode = 0; episode < 2; ++episode) {
    EXPECT_FALSE(client.Step(Action(0)).final_observation.has_value());
    EnvStep end = client.Step(Action(0));
    ASSERT_TRUE(end.truncated);
    ASSERT_TRUE(end.final_observation.has_value());
    // The observation returned with truncated (step 2), then the new episode's first one.
    EXPECT_EQ(static_cast<const uint8_t*>(end.final_observation->map().at("frame").leaf().data())[0], 2);
    EXPECT_EQ(end.final_observation->map().at("frame").leaf().shape(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(FrameValue(end), 0);
  }
  EnvClient other(terminating.address());
  other.Connect();
  other.Step(Action(0));
  EnvStep end = other.Step(Action(0));
  EXPECT_TRUE(end.done);
  EXPECT_FALSE(end.final_observation.has_value());  // Terminated: nothing to bootstrap from.
}

// Reports terminated and truncated together at every step.
class BothEndsEnv : public Env {
 public:
  ArrayNest Reset() override { return ArrayNest(Array::Zeros(DType::kUInt8, {1})); }
  EnvResult Step(const ArrayNest& /*action*/) override {
    EnvResult result;
    result.observation = ArrayNest(Array::Zeros(DType::kUInt8, {1}));
    result.terminated = result.truncated = true;
    return result;
  }
};

TEST(EnvServerTest, TerminationWinsOverTruncation) {
  EnvServer server([]() -> std::unique_ptr<Env> { return std::make_unique<BothEndsEnv>(); }, TempSocket("env"));
  server.Start();
  EnvClient client(server.address());
  client.Connect();
  EnvStep end = client.Step(Action(0));
  EXPECT_TRUE(end.done);
  EXPECT_FALSE(end.truncated);
  EXPECT_FALSE(end.final_observation.has_value());
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
