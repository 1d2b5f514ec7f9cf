#include "core/env_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/support/method_handler.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include "core/array_proto.h"
#include "rpcenv.grpc.pb.h"  // The protobuf SerializationTraits, from the header gRPC's plugin picks.

namespace torchbeast {
namespace {

// An Action as received: the message, or why it did not parse. gRPC's own deserializer would
// end the stream as if the client had closed it (status OK, no message); this one lets the
// server answer INVALID_ARGUMENT.
struct ReceivedAction {
  rpcenv::Action action;
  std::string parse_error;  // "" when the message parsed.
};

}  // namespace
}  // namespace torchbeast

namespace grpc {

template <>
class SerializationTraits<torchbeast::ReceivedAction, void> {
 public:
  static Status Serialize(const torchbeast::ReceivedAction& /*msg*/, ByteBuffer* /*bb*/, bool* /*own_buffer*/) {
    return Status(StatusCode::INTERNAL, "ReceivedAction is never sent");
  }
  static Status Deserialize(ByteBuffer* buffer, torchbeast::ReceivedAction* msg) {
    msg->action.Clear();
    msg->parse_error.clear();
    Status status = GenericDeserialize<ProtoBufferReader, torchbeast::rpcenv::Action>(buffer, &msg->action);
    if (!status.ok()) {
      msg->parse_error = "the Action message does not parse";
      if (!status.error_message().empty()) msg->parse_error += " (" + status.error_message() + ")";
    }
    return Status::OK;
  }
};

}  // namespace grpc

namespace torchbeast {
namespace {

// Every field as it is: the server adds no rule of its own.
void StepToProto(const EnvStep& step, rpcenv::Step* proto) {
  proto->Clear();
  NestToProto(step.observation, proto->mutable_observation());
  proto->set_reward(step.reward);
  proto->set_done(step.done);
  proto->set_truncated(step.truncated);
  proto->set_episode_step(step.episode_step);
  proto->set_episode_return(step.episode_return);
  if (step.final_observation) NestToProto(*step.final_observation, proto->mutable_final_observation());
}

using Stream = grpc::ServerReaderWriter<rpcenv::Step, ReceivedAction>;

}  // namespace

// The StreamingEnv service of rpcenv.proto, registered by hand to read actions as
// ReceivedAction.
class EnvServer::Service final : public grpc::Service {
 public:
  Service(EnvFactory env_factory, int max_streams) : env_factory_(std::move(env_factory)), max_streams_(max_streams) {
    AddMethod(new grpc::internal::RpcServiceMethod(
        "/torchbeast.rpcenv.StreamingEnv/StreamingEnv", grpc::internal::RpcMethod::BIDI_STREAMING,
        new grpc::internal::BidiStreamingHandler<Service, ReceivedAction, rpcenv::Step>(
            [](Service* service, grpc::ServerContext* /*context*/, Stream* stream) {
              return service->StreamingEnv(stream);
            },
            this)));
  }

  grpc::Status StreamingEnv(Stream* stream) {
    if (max_streams_ > 0 && streams_.fetch_add(1) >= max_streams_) {
      streams_.fetch_sub(1);
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "this env server serves at most " + std::to_string(max_streams_) +
                              " stream(s) at a time (polybeast_env --max_streams)");
    }
    struct Release {
      Service* service;
      ~Release() {
        if (service->max_streams_ > 0) service->streams_.fetch_sub(1);
      }
    } release{this};
    try {
      return Serve(stream);
    } catch (const InvalidArgument& e) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::ABORTED, e.what());
    } catch (...) {
      return grpc::Status(grpc::StatusCode::ABORTED, "the environment failed with an unknown exception");
    }
  }

 private:
  grpc::Status Serve(Stream* stream) {
    std::unique_ptr<Env> env = env_factory_();
    if (!env) throw EnvError("the env factory returned no environment");
    rpcenv::Step step;
    StepToProto(env->Initial(), &step);
    if (!stream->Write(step)) return grpc::Status::OK;  // The client went away.

    ReceivedAction action;
    while (stream->Read(&action)) {  // Ends when the client closes or cancels the stream.
      if (!action.parse_error.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, action.parse_error);
      StepToProto(env->Step(NestFromProto(action.action.mutable_action())), &step);
      if (!stream->Write(step)) break;
    }
    return grpc::Status::OK;
  }

  const EnvFactory env_factory_;
  const int max_streams_;
  std::atomic<int> streams_{0};  // Being served now.
};

EnvServer::EnvServer(EnvFactory env_factory, std::string address, int max_streams, std::optional<TlsConfig> tls)
    : address_(std::move(address)),
      tls_(std::move(tls)),
      service_(std::make_unique<Service>(std::move(env_factory), max_streams)) {
  if (max_streams < 0) throw InvalidArgument("EnvServer: max_streams must be >= 0");
}

EnvServer::~EnvServer() { Stop(); }

void EnvServer::Start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    StartLocked();
  }
  stopped_cv_.notify_all();  // Wakes Wait() callers that came before Start().
}

void EnvServer::StartLocked() {
  if (stop_requested_) return;
  if (started_) throw Error("EnvServer on " + address_ + " was already started");
  started_ = true;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address_, ServerCredentialsFor(address_, tls_), &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(kMaxActionBytes);
  builder.SetMaxSendMessageSize(-1);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // A served port is not shared.
  server_ = builder.BuildAndStart();
  if (!server_) throw Error("EnvServer: cannot listen on " + address_);
}

void EnvServer::Wait() {
  grpc::Server* server = nullptr;
  {
    std::unique_lock<std::mutex> lock(mu_);
    // Ends once the server is started (then grpc's Wait() blocks until shutdown) or stopped.
    stopped_cv_.wait(lock, [this] { return server_ != nullptr || stop_requested_; });
    if (stop_requested_) {
      stopped_cv_.wait(lock, [this] { return stopped_; });  // Ends when Stop() has finished.
      return;
    }
    server = server_.get();
  }
  server->Wait();
}

void EnvServer::Run() {
  Start();
  Wait();
}

void EnvServer::Stop() {
  grpc::Server* server = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_requested_) return;
    stop_requested_ = true;
    server = server_.get();
  }
  stopped_cv_.notify_all();
  // Cancels in-flight streams right away; returns when their handlers have returned.
  if (server != nullptr) server->Shutdown(std::chrono::system_clock::now());
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  stopped_cv_.notify_all();
}

int EnvServer::port() const {
  std::lock_guard<std::mutex> lock(mu_);
  return port_;
}

}  // namespace torchbeast
