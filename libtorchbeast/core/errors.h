// Exception types thrown by the libtorchbeast core. The Python binding maps them to
// libtorchbeast.ClosedError, BatchDroppedError, EnvError, RpcError and PeerError (both
// ConnectionErrors) and ValueError.
#pragma once

#include <stdexcept>
#include <string>

namespace torchbeast {

// Base of every runtime failure raised by the core.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A queue or batcher was closed: enqueue/dequeue/compute on it will never succeed again.
class ClosedError : public Error {
 public:
  using Error::Error;
};

// A DynamicBatcher batch was destroyed before set_outputs(): its callers get this instead of
// waiting forever.
class BatchDroppedError : public Error {
 public:
  using Error::Error;
};

// The environment behind an env server raised; the message is the environment's own.
class EnvError : public Error {
 public:
  using Error::Error;
};

// A gRPC stream failed for a transport reason (server not there, went away, cancelled).
// Retrying later may succeed.
class RpcError : public Error {
 public:
  RpcError(int code, const std::string& message) : Error(message), code_(code) {}
  int code() const { return code_; }  // a grpc::StatusCode

 private:
  int code_;
};

// An env server sent something an actor cannot use: a step that does not decode or does not
// match the run's step spec, a message over the size limit, or no step before the deadline.
// The actor drops that connection and retries it later; the run goes on.
class PeerError : public Error {
 public:
  using Error::Error;
};

// A bad argument: wrong shapes, dtypes, structures or option values.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace torchbeast
