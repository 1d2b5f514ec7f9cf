// EnvClient: the actor's end of one env server stream (rpcenv.proto).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/env.h"
#include "core/tls.h"

namespace grpc {
class Channel;
class ClientContext;
template <class W, class R>
class ClientReaderWriter;
}  // namespace grpc

namespace torchbeast {
namespace rpcenv {
class Action;
class Step;
}  // namespace rpcenv

class EnvClient {
 public:
  // `address`: "unix:/path" or "host:port". Makes a channel of its own; connects in Connect().
  // `max_receive_bytes`: the largest Step message accepted (-1: no limit); a larger one ends
  // the stream with PeerError. `tls`: see core/tls.h (a server that refuses the certificate, or
  // whose certificate fails the check, is an RpcError like an unreachable one).
  explicit EnvClient(std::string address, int max_receive_bytes = -1,
                     const std::optional<TlsConfig>& tls = std::nullopt);
  ~EnvClient();
  EnvClient(const EnvClient&) = delete;
  EnvClient& operator=(const EnvClient&) = delete;

  // Opens a new stream (ending any previous one) and returns its first step. Throws RpcError
  // when the server cannot be reached or the stream breaks (retrying may help), EnvError when
  // the server's env failed, InvalidArgument when the server could not decode an action,
  // PeerError for a step that does not decode, a message over the size limit (or any
  // RESOURCE_EXHAUSTED status) and after Expire(), ClosedError after Cancel().
  EnvStep Connect();
  // Sends an action and returns the next step. Throws like Connect(); Error without a stream.
  EnvStep Step(const ArrayNest& action);
  // Ends the stream cleanly (the server destroys its env). Does nothing without a stream.
  void Close();
  // Cancels the stream from any thread: a blocked Connect() or Step() throws ClosedError, and
  // so does every later call.
  void Cancel();
  // Ends the current stream from any thread because the server took too long: the blocked (or
  // next) Connect() or Step() throws PeerError(`reason`). Unlike Cancel(), affects only the
  // stream open now (or the next one, if none is open).
  void Expire(const std::string& reason);

  const std::string& address() const { return address_; }

  // Decodes a Step as received, taking its array bytes out of `step`. Throws PeerError saying
  // what does not decode. Public for the fuzz target (fuzz/) and tests.
  static EnvStep FromProto(rpcenv::Step* step);

 private:
  [[noreturn]] void ThrowStreamError();  // After a failed read or write.

  const std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::ClientReaderWriter<rpcenv::Action, rpcenv::Step>> stream_;
  std::unique_ptr<rpcenv::Action> action_;  // Reused between steps.
  std::unique_ptr<rpcenv::Step> step_;

  std::mutex mu_;  // Lets Cancel() reach the context from another thread.
  std::unique_ptr<grpc::ClientContext> context_ /* GUARDED_BY(mu_) */;
  bool cancelled_ /* GUARDED_BY(mu_) */ = false;
  std::string expired_ /* GUARDED_BY(mu_) */;  // Expire()'s reason, "" if not expired.
};

}  // namespace torchbeast
