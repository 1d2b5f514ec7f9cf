#include "core/registry.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "core/errors.h"
#include "core/test_util.h"

namespace torchbeast {
namespace {

using std::chrono::milliseconds;
using Clock = Registry::Clock;

// Waits up to 10 s for `condition`.
template <typename Condition>
bool Eventually(Condition condition) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return condition();
}

TEST(RegistryTest, AddressProblem) {
  for (const std::string& good :
       std::vector<std::string>{"10.0.0.2:4431", "host-a.example:1", "[::1]:65535", "unix:/tmp/pb.0"}) {
    EXPECT_EQ(AddressProblem(good), "") << good;
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "nohost", ":4431", "host:0", "host:65536", "host:44x", "::1:4431", "[::1:80",
                                "unix:", "a b:80", std::string("h\n:80"), std::string(600, 'h') + ":80"}) {
    EXPECT_NE(AddressProblem(bad), "") << bad;
  }
}

TEST(RegistryTest, LeasesAreMadeRenewedEndedAndForgotten) {
  Registry registry("unix:/nowhere", /*heartbeat=*/milliseconds(1000));
  const Clock::time_point t0 = Clock::now() - std::chrono::seconds(100);
  EXPECT_FALSE(registry.Register({"10.0.0.2:4431", "10.0.0.2:4432"}, /*leaving=*/false, "peer-a", t0));
  auto leases = registry.leases();
  ASSERT_EQ(leases.size(), 2u);
  EXPECT_EQ(leases[0].address, "10.0.0.2:4431");
  EXPECT_EQ(leases[0].peer, "peer-a");
  EXPECT_GT(leases[0].seconds_since_heartbeat, 99.0);
  EXPECT_FALSE(leases[0].leaving);

  EXPECT_FALSE(registry.Register({"10.0.0.2:4431"}, /*leaving=*/false, "peer-b", Clock::now()));  // Renewed.
  leases = registry.leases();
  EXPECT_LT(leases[0].seconds_since_heartbeat, 5.0);
  EXPECT_EQ(leases[0].peer, "peer-b");
  EXPECT_GT(leases[1].seconds_since_heartbeat, 99.0);  // Not renewed.

  EXPECT_FALSE(registry.Register({"10.0.0.2:4432", "10.0.0.9:1"}, /*leaving=*/true, "peer-a", Clock::now()));
  leases = registry.leases();
  ASSERT_EQ(leases.size(), 2u);  // Leaving never makes a lease.
  EXPECT_TRUE(leases[1].leaving);

  EXPECT_TRUE(registry.Forget("10.0.0.2:4432"));
  EXPECT_FALSE(registry.Forget("10.0.0.2:4432"));
  EXPECT_EQ(registry.leases().size(), 1u);
  EXPECT_FALSE(registry.Register({"10.0.0.2:4432"}, /*leaving=*/false, "peer-a", Clock::now()));  // New again.
  EXPECT_EQ(registry.leases().size(), 2u);
}

TEST(RegistryTest, ARequestWithABadAddressChangesNothing) {
  Registry registry("unix:/nowhere", /*heartbeat=*/milliseconds(1000));
  const auto refusal = registry.Register({"10.0.0.2:4431", "bad address"}, /*leaving=*/false, "peer", Clock::now());
  ASSERT_TRUE(refusal);
  EXPECT_FALSE(refusal->over_limit);
  EXPECT_NE(refusal->why.find("bad address"), std::string::npos) << refusal->why;
  EXPECT_TRUE(registry.leases().empty());
  const std::vector<std::string> many(Registry::kMaxAddressesPerRequest + 1, "10.0.0.2:4431");
  const auto over = registry.Register(many, /*leaving=*/false, "peer", Clock::now());
  ASSERT_TRUE(over);
  EXPECT_TRUE(over->over_limit);
  EXPECT_TRUE(registry.leases().empty());
}

TEST(RegistryTest, ARegistrarRegistersRepeatsAndSaysItLeaves) {
  Registry registry("127.0.0.1:0", /*heartbeat=*/milliseconds(100));
  registry.Start();
  const std::string learner = "127.0.0.1:" + std::to_string(registry.port());
  ::testing::internal::CaptureStderr();
  Registrar registrar(learner, {"10.0.0.2:4431"});
  registrar.Start();
  ASSERT_TRUE(Eventually([&] { return registrar.state().registrations >= 3; }));  // Heartbeats every 100 ms.
  const auto state = registrar.state();
  EXPECT_TRUE(state.registered);
  EXPECT_DOUBLE_EQ(state.heartbeat_s, 0.1);
  auto leases = registry.leases();
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].address, "10.0.0.2:4431");
  EXPECT_NE(leases[0].peer.find("127.0.0.1"), std::string::npos) << leases[0].peer;
  EXPECT_FALSE(leases[0].leaving);
  registrar.Stop();
  EXPECT_TRUE(registry.leases()[0].leaving);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("registered 10.0.0.2:4431 with the learner at " + learner), std::string::npos) << log;
}

TEST(RegistryTest, ARegistrarWaitsForALearnerThatStartsLate) {
  const std::string address = testing::TempSocket("registry");
  ::testing::internal::CaptureStderr();
  Registrar registrar(address, {"10.0.0.2:4431"});
  registrar.Start();
  ASSERT_TRUE(Eventually([&] { return !registrar.state().last_error.empty(); }));
  EXPECT_FALSE(registrar.state().registered);
  std::this_thread::sleep_for(milliseconds(600));  // A few retries.
  Registry registry(address, /*heartbeat=*/milliseconds(100));
  registry.Start();
  EXPECT_TRUE(Eventually([&] { return registry.leases().size() == 1; }));
  registrar.Stop(/*say_leaving=*/false);
  EXPECT_FALSE(registry.leases()[0].leaving);
  const std::string log = ::testing::internal::GetCapturedStderr();
  // Said once per outage, not at every retry.
  int said = 0;
  for (auto at = log.find("cannot register"); at != std::string::npos; at = log.find("cannot register", at + 1)) ++said;
  EXPECT_EQ(said, 1) << log;
  EXPECT_NE(log.find("(reachable again)"), std::string::npos) << log;
}

TEST(RegistryTest, InvalidArguments) {
  EXPECT_THROW(Registry("127.0.0.1:0", milliseconds(0)), InvalidArgument);
  EXPECT_THROW(Registrar("nowhere", {"10.0.0.2:4431"}), InvalidArgument);
  EXPECT_THROW(Registrar("127.0.0.1:1", {}), InvalidArgument);
  EXPECT_THROW(Registrar("127.0.0.1:1", {"bad"}), InvalidArgument);
  Registry registry("127.0.0.1:0", milliseconds(100));
  registry.Start();
  Registry second("127.0.0.1:" + std::to_string(registry.port()), milliseconds(100));
  EXPECT_THROW(second.Start(), Error);  // No SO_REUSEPORT.
}

}  // namespace
}  // namespace torchbeast
