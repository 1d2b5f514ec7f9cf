#include "core/registry.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cctype>
#include <iostream>
#include <utility>

#include "core/errors.h"
#include "rpcenv.grpc.pb.h"

namespace torchbeast {
namespace {

constexpr std::chrono::milliseconds kCallDeadline(5000);
constexpr std::chrono::milliseconds kInitialBackoff(250);
constexpr std::chrono::milliseconds kMaxBackoff(5000);
// A learner's heartbeat request is clamped to this range: a peer cannot make servers spin or go mute.
constexpr double kMinHeartbeatS = 0.05;
constexpr double kMaxHeartbeatS = 60.0;

void Log(const std::string& message) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::cerr << "[libtorchbeast.Registrar] " << message << std::endl;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

}  // namespace

std::string AddressProblem(const std::string& address) {
  const std::string quoted = "address '" + address.substr(0, 100) + "'";
  if (address.empty()) return "an empty address";
  if (static_cast<int>(address.size()) > Registry::kMaxAddressLength) {
    return "an address longer than " + std::to_string(Registry::kMaxAddressLength) + " characters";
  }
  for (unsigned char c : address) {
    if (c <= ' ' || c == 0x7f) return quoted + ": has a space or control character";
  }
  if (address.rfind("unix:", 0) == 0) {
    return address.size() > 5 ? "" : quoted + ": expected unix:/path";
  }
  const std::size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return quoted + ": expected host:port or unix:/path";
  const std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) || std::stoi(port) < 1 ||
      std::stoi(port) > 65535) {
    return quoted + ": the port must be a number from 1 to 65535";
  }
  const bool bracketed = host.front() == '[' && host.back() == ']' && host.size() > 2;
  if (!bracketed && host.find(':') != std::string::npos) return quoted + ": an IPv6 host needs brackets, [::1]:port";
  if (bracketed && host.find_first_of("[]", 1) != host.size() - 1) return quoted + ": a malformed [IPv6] host";
  if (!bracketed && host.find_first_of("[]") != std::string::npos) return quoted + ": a malformed host";
  return "";
}

// The Registry service of rpcenv.proto.
class Registry::Service final : public rpcenv::Registry::Service {
 public:
  explicit Service(Registry* registry) : registry_(registry) {}

  grpc::Status Register(grpc::ServerContext* context, const rpcenv::RegisterRequest* request,
                        rpcenv::RegisterReply* reply) override {
    if (request->addresses_size() > kMaxAddressesPerRequest) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "at most " + std::to_string(kMaxAddressesPerRequest) + " addresses per registration");
    }
    std::vector<std::string> addresses(request->addresses().begin(), request->addresses().end());
    std::optional<Refusal> refusal = registry_->Register(addresses, request->leaving(), context->peer(), Clock::now());
    if (refusal) {
      return grpc::Status(
          refusal->over_limit ? grpc::StatusCode::RESOURCE_EXHAUSTED : grpc::StatusCode::INVALID_ARGUMENT,
          refusal->why);
    }
    reply->set_heartbeat_s(std::chrono::duration<double>(registry_->heartbeat()).count());
    return grpc::Status::OK;
  }

 private:
  Registry* const registry_;
};

Registry::Registry(std::string address, std::chrono::milliseconds heartbeat, std::optional<TlsConfig> tls)
    : address_(std::move(address)),
      heartbeat_(heartbeat),
      tls_(std::move(tls)),
      service_(std::make_unique<Service>(this)) {
  if (heartbeat_.count() <= 0) throw InvalidArgument("Registry: heartbeat must be positive");
}

Registry::~Registry() { Stop(); }

void Registry::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return;
  if (started_) throw Error("Registry on " + address_ + " was already started");
  started_ = true;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address_, ServerCredentialsFor(address_, tls_), &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // A second learner on the port fails to start.
  server_ = builder.BuildAndStart();
  if (!server_) throw Error("Registry: cannot listen on " + address_);
}

void Registry::Stop() {
  std::unique_ptr<grpc::Server> server;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    server = std::move(server_);
  }
  if (server) server->Shutdown(std::chrono::system_clock::now());
}

int Registry::port() const {
  std::lock_guard<std::mutex> lock(mu_);
  return port_;
}

std::vector<Registry::Lease> Registry::leases() const {
  const Clock::time_point now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Lease> out;
  out.reserve(entries_.size());
  for (const auto& [address, entry] : entries_) {
    out.push_back({address, entry.peer, std::chrono::duration<double>(now - entry.last).count(), entry.leaving});
  }
  return out;
}

bool Registry::Forget(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.erase(address) > 0;
}

std::optional<Registry::Refusal> Registry::Register(const std::vector<std::string>& addresses, bool leaving,
                                                    const std::string& peer, Clock::time_point now) {
  if (static_cast<int>(addresses.size()) > kMaxAddressesPerRequest) {
    return Refusal{true, "at most " + std::to_string(kMaxAddressesPerRequest) + " addresses per registration"};
  }
  for (const std::string& address : addresses) {
    const std::string problem = AddressProblem(address);
    if (!problem.empty()) return Refusal{false, "registration refused: " + problem};
  }
  std::lock_guard<std::mutex> lock(mu_);
  const auto fresh = std::count_if(addresses.begin(), addresses.end(),
                                   [this](const std::string& a) { return entries_.count(a) == 0; });
  if (!leaving && static_cast<int64_t>(entries_.size()) + fresh > kMaxAddresses) {
    return Refusal{true, "the learner holds " + std::to_string(kMaxAddresses) + " env servers already"};
  }
  for (const std::string& address : addresses) {
    auto entry = entries_.find(address);
    if (entry == entries_.end()) {
      if (leaving) continue;  // Never known (or forgotten): nothing to end.
      entry = entries_.emplace(address, Entry{}).first;
    }
    entry->second.peer = peer;
    entry->second.last = now;
    entry->second.leaving = leaving;
  }
  return std::nullopt;
}

Registrar::Registrar(std::string learner, std::vector<std::string> addresses, std::optional<TlsConfig> tls)
    : learner_(std::move(learner)), addresses_(std::move(addresses)) {
  const std::string problem = AddressProblem(learner_);
  if (!problem.empty()) throw InvalidArgument("Registrar: learner " + problem);
  if (addresses_.empty()) throw InvalidArgument("Registrar: no addresses to register");
  for (const std::string& address : addresses_) {
    const std::string bad = AddressProblem(address);
    if (!bad.empty()) throw InvalidArgument("Registrar: " + bad);
  }
  grpc::ChannelArguments args;
  // Our own backoff decides when to retry; gRPC's would delay the first call after an outage.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, MinConnectTimeoutMs(learner_, tls));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  channel_ = grpc::CreateCustomChannel(learner_, ChannelCredentialsFor(learner_, tls), args);
}

Registrar::~Registrar() { Stop(/*say_leaving=*/false); }

void Registrar::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) throw Error("Registrar.start() was already called");
  started_ = true;
  if (stop_) return;
  thread_ = std::thread(&Registrar::Loop, this);
}

void Registrar::Stop(bool say_leaving, std::chrono::milliseconds timeout) {
  bool registered_once;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
    if (context_ != nullptr) context_->TryCancel();
    registered_once = state_.registrations > 0;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (say_leaving && registered_once) {
    double ignored;
    Call(/*leaving=*/true, timeout, &ignored);  // Best effort: without it the lease runs out.
  }
}

Registrar::State Registrar::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

std::string Registrar::Call(bool leaving, std::chrono::milliseconds deadline, double* heartbeat_s) {
  rpcenv::RegisterRequest request;
  for (const std::string& address : addresses_) request.add_addresses(address);
  request.set_leaving(leaving);
  rpcenv::RegisterReply reply;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!leaving) {
      if (stop_) return "stopped";
      context_ = &context;
    }
  }
  grpc::Status status = rpcenv::Registry::NewStub(channel_)->Register(&context, request, &reply);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!leaving) context_ = nullptr;
  }
  if (!status.ok()) {
    return "gRPC status " + std::to_string(static_cast<int>(status.error_code())) + ": " + status.error_message();
  }
  *heartbeat_s = std::clamp(reply.heartbeat_s(), kMinHeartbeatS, kMaxHeartbeatS);
  return "";
}

void Registrar::Loop() {
  std::chrono::milliseconds backoff = kInitialBackoff;
  bool said_unreachable = false;
  for (;;) {
    double heartbeat_s = 0;
    const std::string error = Call(/*leaving=*/false, kCallDeadline, &heartbeat_s);
    std::chrono::milliseconds wait;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      if (error.empty()) {
        if (!state_.registered) {
          Log("registered " + Join(addresses_) + " with the learner at " + learner_ +
              (said_unreachable ? " (reachable again)" : ""));
        }
        state_.registered = true;
        ++state_.registrations;
        state_.last_error.clear();
        state_.heartbeat_s = heartbeat_s;
        said_unreachable = false;
        backoff = kInitialBackoff;
        wait = std::chrono::milliseconds(static_cast<int64_t>(heartbeat_s * 1000));
      } else {
        if (!said_unreachable) {
          Log("cannot register with the learner at " + learner_ + " (" + error + "); retrying until it answers");
          said_unreachable = true;
        }
        state_.registered = false;
        state_.last_error = error;
        wait = backoff;
        backoff = std::min(2 * backoff, kMaxBackoff);
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_cv_.wait_for(lock, wait, [this] { return stop_; })) return;  // Ends early on Stop().
  }
}

}  // namespace torchbeast
