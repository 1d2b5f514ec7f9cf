// Env server registration (rpcenv.proto's Registry service).
//
// Registry: the learner's end. It serves Register on an address of its own and keeps a lease
// per registered env server address: when it last heard of it, and whether the server said it
// is leaving. It decides nothing itself: the learner reads leases() to add actors for new
// addresses and to drop those that went silent, then forget()s them (a later heartbeat makes a
// forgotten address new again). A request with a bad address (see AddressProblem) or over the
// limits is refused with INVALID_ARGUMENT or RESOURCE_EXHAUSTED and changes nothing.
//
// Registrar: the env server's end. A thread registers the addresses with the learner and
// repeats it every heartbeat_s seconds the learner's reply asks for, retrying with backoff
// while the learner is not reachable (logging once per outage); Stop() tells the learner the
// addresses are leaving. TCP is mutual TLS with a TlsConfig (core/tls.h).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/tls.h"

namespace grpc {
class Channel;
class ClientContext;
class Server;
}  // namespace grpc

namespace torchbeast {

// Why `address` is not "unix:/path" or "host:port" (port 1-65535, host without spaces or
// control characters, IPv6 in brackets), or "" when it is.
std::string AddressProblem(const std::string& address);

class Registry {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kMaxAddresses = 4096;  // Leases held at a time.
  static constexpr int kMaxAddressesPerRequest = 256;
  static constexpr int kMaxAddressLength = 512;
  static constexpr int kMaxRequestBytes = 1 << 18;

  struct Lease {
    std::string address;
    std::string peer;                // Who registered it last, as gRPC names it (e.g. "ipv4:10.0.0.2:51234").
    double seconds_since_heartbeat;  // Since it was last registered.
    bool leaving;                    // The server said it stops.
  };

  // `address`: where to serve Register ("host:port", port 0 picks one; or "unix:/path").
  // `heartbeat`: how often servers are asked to repeat their registration.
  Registry(std::string address, std::chrono::milliseconds heartbeat, std::optional<TlsConfig> tls = std::nullopt);
  ~Registry();  // Stops the server.
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Starts serving in gRPC's threads. Throws Error when the address cannot be bound or on a
  // second call; does nothing after Stop().
  void Start();
  // Stops serving; safe to call more than once, from any thread, and before Start().
  void Stop();

  const std::string& address() const { return address_; }
  int port() const;  // The bound TCP port (0 for unix sockets or before Start()).
  std::chrono::milliseconds heartbeat() const { return heartbeat_; }

  // The leases, ordered by address.
  std::vector<Lease> leases() const;
  // Forgets `address`; false when it has no lease.
  bool Forget(const std::string& address);

  // Why a request was refused: a bad address (INVALID_ARGUMENT) or over a limit
  // (RESOURCE_EXHAUSTED).
  struct Refusal {
    bool over_limit = false;
    std::string why;
  };
  // What the service does with a request: renews a lease per address (making new ones), or
  // refuses it, changing nothing. Public for tests.
  std::optional<Refusal> Register(const std::vector<std::string>& addresses, bool leaving, const std::string& peer,
                                  Clock::time_point now);

 private:
  class Service;
  struct Entry {
    std::string peer;
    Clock::time_point last;
    bool leaving = false;
  };

  const std::string address_;
  const std::chrono::milliseconds heartbeat_;
  const std::optional<TlsConfig> tls_;
  const std::unique_ptr<Service> service_;

  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_ /* GUARDED_BY(mu_) */;
  std::unique_ptr<grpc::Server> server_ /* GUARDED_BY(mu_) */;
  bool started_ /* GUARDED_BY(mu_) */ = false;
  bool stopped_ /* GUARDED_BY(mu_) */ = false;
  int port_ /* GUARDED_BY(mu_) */ = 0;
};

class Registrar {
 public:
  struct State {
    bool registered = false;    // The last attempt succeeded.
    int64_t registrations = 0;  // Successful Register calls so far.
    std::string last_error;     // Of the last failed attempt, or "".
    double heartbeat_s = 0;     // As the learner asked last (0 before the first reply).
  };

  // `learner`: the Registry's address. `addresses`: this server's, as the learner reaches them.
  Registrar(std::string learner, std::vector<std::string> addresses, std::optional<TlsConfig> tls = std::nullopt);
  ~Registrar();  // Stop() without the leaving message.
  Registrar(const Registrar&) = delete;
  Registrar& operator=(const Registrar&) = delete;

  // Starts registering in a thread of its own. Throws Error on a second call.
  void Start();
  // Ends the thread, then (with `say_leaving`) tells the learner the addresses are leaving,
  // waiting at most `timeout` for it. Safe to call more than once.
  void Stop(bool say_leaving = true, std::chrono::milliseconds timeout = std::chrono::milliseconds(1000));

  State state() const;
  const std::string& learner() const { return learner_; }

 private:
  // One Register call with `deadline`; "" on success, else why it failed.
  std::string Call(bool leaving, std::chrono::milliseconds deadline, double* heartbeat_s);
  void Loop();

  const std::string learner_;
  const std::vector<std::string> addresses_;
  std::shared_ptr<grpc::Channel> channel_;
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;  // Signalled when stop_ becomes true.
  bool started_ /* GUARDED_BY(mu_) */ = false;
  bool stop_ /* GUARDED_BY(mu_) */ = false;
  grpc::ClientContext* context_ /* GUARDED_BY(mu_) */ = nullptr;  // Of the call in flight, for Stop().
  State state_ /* GUARDED_BY(mu_) */;
};

}  // namespace torchbeast
