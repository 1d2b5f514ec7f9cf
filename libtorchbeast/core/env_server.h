// EnvServer: a gRPC server that runs one environment per client stream (rpcenv.proto).
//
// For every stream it makes an env with the factory, sends its Initial() step and answers each
// action with the env's Step(action), copying every field of the record as it is: the env does
// the episode bookkeeping (see core/env.h). Env failures end the stream with status ABORTED
// carrying the error message; an action that does not parse or cannot be decoded ends it with
// INVALID_ARGUMENT and a message saying why. Limits: an Action message of at most
// kMaxActionBytes (a larger one ends the stream with RESOURCE_EXHAUSTED), at most `max_streams`
// streams at a time (a further one gets RESOURCE_EXHAUSTED before any env is made), and the
// address is never shared with another server (SO_REUSEPORT off: binding a served TCP port
// fails). TCP is mutual TLS with a TlsConfig, plaintext without (core/tls.h).
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/env.h"
#include "core/tls.h"

namespace grpc {
class Server;
}

namespace torchbeast {

class EnvServer {
 public:
  static constexpr int kMaxActionBytes = 1 << 20;

  // `address`: "unix:/path/to/socket" or "host:port" (port 0 picks a free port, see port()).
  // `max_streams`: streams served at a time (0: no limit). `tls`: see core/tls.h.
  EnvServer(EnvFactory env_factory, std::string address, int max_streams = 0,
            std::optional<TlsConfig> tls = std::nullopt);
  ~EnvServer();  // Stops the server.
  EnvServer(const EnvServer&) = delete;
  EnvServer& operator=(const EnvServer&) = delete;

  // Starts serving in gRPC's threads and returns. Throws Error if the address cannot be bound
  // or the server was started before; does nothing after Stop().
  void Start();
  // Blocks until Stop() has finished.
  void Wait();
  // Start() then Wait().
  void Run();
  // Cancels open streams, waits for their handlers to return and makes Wait() return.
  // Safe to call from any thread, more than once, and before Start().
  void Stop();

  const std::string& address() const { return address_; }
  // The TCP port bound by Start() (useful with port 0); 0 for unix sockets or before Start().
  int port() const;

 private:
  class Service;
  void StartLocked();  // Needs mu_.

  const std::string address_;
  const std::optional<TlsConfig> tls_;
  const std::unique_ptr<Service> service_;

  mutable std::mutex mu_;
  std::condition_variable stopped_cv_;  // Signalled when stopped_ becomes true.
  std::unique_ptr<grpc::Server> server_ /* GUARDED_BY(mu_) */;
  bool started_ /* GUARDED_BY(mu_) */ = false;
  bool stop_requested_ /* GUARDED_BY(mu_) */ = false;
  bool stopped_ /* GUARDED_BY(mu_) */ = false;  // Stop() has shut the server down.
  int port_ /* GUARDED_BY(mu_) */ = 0;
};

}  // namespace torchbeast
