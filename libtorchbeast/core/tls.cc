#include "core/tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include "core/errors.h"

namespace torchbeast {

bool IsUnixAddress(const std::string& address) {
  return address.rfind("unix:", 0) == 0 || address.rfind("unix-abstract:", 0) == 0;
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentialsFor(const std::string& address,
                                                              const std::optional<TlsConfig>& tls) {
  if (!tls || IsUnixAddress(address)) return grpc::InsecureServerCredentials();
  if (tls->cert_chain.empty() || tls->private_key.empty() || tls->root_certs.empty()) {
    throw InvalidArgument("TLS server on " + address + ": needs a certificate, its key and the CA certificate");
  }
  grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls->root_certs;
  options.pem_key_cert_pairs.push_back({tls->private_key, tls->cert_chain});
  return grpc::SslServerCredentials(options);
}

int MinConnectTimeoutMs(const std::string& address, const std::optional<TlsConfig>& tls) {
  return tls && !IsUnixAddress(address) ? 5000 : 100;
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(const std::string& address,
                                                                const std::optional<TlsConfig>& tls) {
  if (!tls || IsUnixAddress(address)) return grpc::InsecureChannelCredentials();
  // Empty root certificates would make gRPC trust the system's public CAs: never for our peers.
  if (tls->root_certs.empty()) throw InvalidArgument("TLS client of " + address + ": needs the CA certificate");
  if (tls->cert_chain.empty() != tls->private_key.empty()) {
    throw InvalidArgument("TLS client of " + address + ": a certificate needs its key and a key its certificate");
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls->root_certs;
  options.pem_private_key = tls->private_key;
  options.pem_cert_chain = tls->cert_chain;
  return grpc::SslCredentials(options);
}

}  // namespace torchbeast
