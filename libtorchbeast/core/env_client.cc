#include "core/env_client.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "core/array_proto.h"
#include "rpcenv.grpc.pb.h"

namespace torchbeast {

EnvClient::EnvClient(std::string address, int max_receive_bytes, const std::optional<TlsConfig>& tls)
    : address_(std::move(address)),
      action_(std::make_unique<rpcenv::Action>()),
      step_(std::make_unique<rpcenv::Step>()) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_receive_bytes);
  args.SetMaxSendMessageSize(-1);
  // A connection of our own (not shared with other clients of the same address), and quick
  // reconnects: the actor pool does its own backoff.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, MinConnectTimeoutMs(address_, tls));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  channel_ = grpc::CreateCustomChannel(address_, ChannelCredentialsFor(address_, tls), args);
}

EnvClient::~EnvClient() {
  Cancel();
  if (stream_) stream_->Finish();
}

EnvStep EnvClient::Connect() {
  if (stream_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      context_->TryCancel();  // Ends the old stream.
    }
    stream_->Finish();
    stream_.reset();
  }
  grpc::ClientContext* context;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) throw ClosedError("EnvClient for " + address_ + " was cancelled");
    if (!expired_.empty()) throw PeerError(expired_);
    context_ = std::make_unique<grpc::ClientContext>();
    context = context_.get();
  }
  stream_ = rpcenv::StreamingEnv::NewStub(channel_)->StreamingEnv(context);
  if (!stream_->Read(step_.get())) ThrowStreamError();
  return FromProto(step_.get());
}

EnvStep EnvClient::Step(const ArrayNest& action) {
  if (!stream_) throw Error("EnvClient.step: not connected");
  action_->Clear();
  NestToProto(action, action_->mutable_action());
  if (!stream_->Write(*action_)) ThrowStreamError();
  if (!stream_->Read(step_.get())) ThrowStreamError();
  return FromProto(step_.get());
}

void EnvClient::Close() {
  if (!stream_) return;
  stream_->WritesDone();
  grpc::Status status = stream_->Finish();
  stream_.reset();
}

void EnvClient::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  if (context_) context_->TryCancel();
}

void EnvClient::Expire(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  expired_ = reason.empty() ? "expired" : reason;
  if (context_) context_->TryCancel();
}

void EnvClient::ThrowStreamError() {
  grpc::Status status = stream_->Finish();
  stream_.reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) throw ClosedError("EnvClient for " + address_ + " was cancelled");
    if (!expired_.empty()) throw PeerError(expired_);
  }
  const std::string where = " (env server " + address_ + ")";
  switch (status.error_code()) {
    case grpc::StatusCode::ABORTED:
      throw EnvError(status.error_message() + where);
    case grpc::StatusCode::INVALID_ARGUMENT:
      throw InvalidArgument(status.error_message() + where);
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      throw PeerError("gRPC status RESOURCE_EXHAUSTED: " + status.error_message());
    case grpc::StatusCode::OK:
      throw RpcError(static_cast<int>(status.error_code()), "the env server ended the stream" + where);
    default:
      throw RpcError(static_cast<int>(status.error_code()), "stream failed with gRPC status " +
                                                                std::to_string(static_cast<int>(status.error_code())) +
                                                                ": " + status.error_message() + where);
  }
}

EnvStep EnvClient::FromProto(rpcenv::Step* step) try {
  EnvStep out;
  out.observation = NestFromProto(step->mutable_observation());
  out.reward = step->reward();
  out.done = step->done();
  out.truncated = step->truncated();
  out.episode_step = step->episode_step();
  out.episode_return = step->episode_return();
  if (step->has_final_observation()) out.final_observation = NestFromProto(step->mutable_final_observation());
  return out;
} catch (const InvalidArgument& e) {
  throw PeerError(std::string("step does not decode: ") + e.what());
}

}  // namespace torchbeast
