#include "core/env_server.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <exception>
#include <utility>

#include "core/array_proto.h"
#include "rpcenv.grpc.pb.h"

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

}  // namespace

class EnvServer::Service final : public rpcenv::StreamingEnv::Service {
 public:
  explicit Service(EnvFactory env_factory) : env_factory_(std::move(env_factory)) {}

  grpc::Status StreamingEnv(grpc::ServerContext* /*context*/,
                            grpc::ServerReaderWriter<rpcenv::Step, rpcenv::Action>* stream) override {
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
  grpc::Status Serve(grpc::ServerReaderWriter<rpcenv::Step, rpcenv::Action>* stream) {
    std::unique_ptr<Env> env = env_factory_();
    if (!env) throw EnvError("the env factory returned no environment");
    rpcenv::Step step;
    StepToProto(env->Initial(), &step);
    if (!stream->Write(step)) return grpc::Status::OK;  // The client went away.

    rpcenv::Action action;
    while (stream->Read(&action)) {  // Ends when the client closes or cancels the stream.
      StepToProto(env->Step(NestFromProto(action.mutable_action())), &step);
      if (!stream->Write(step)) break;
    }
    return grpc::Status::OK;
  }

  const EnvFactory env_factory_;
};

EnvServer::EnvServer(EnvFactory env_factory, std::string address)
    : address_(std::move(address)), service_(std::make_unique<Service>(std::move(env_factory))) {}

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
  builder.AddListeningPort(address_, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
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
