// Transport credentials of every gRPC endpoint of the core (env servers, actors, the registry).
//
// Unix sockets are always plaintext. A TCP endpoint is plaintext without a TlsConfig, and mutual
// TLS with one: a server sends its certificate and requires and verifies the client's against
// root_certs (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY); a client verifies the
// server's certificate (and that it names the host it dialled) against root_certs and presents
// its own. Whether plaintext is allowed for an address is the caller's policy (the Python
// commands allow it on loopback or with --insecure).
#pragma once

#include <memory>
#include <optional>
#include <string>

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace torchbeast {

// PEM text (not file names).
struct TlsConfig {
  std::string cert_chain;   // This side's certificate (chain); a client may leave it empty.
  std::string private_key;  // Its key; empty exactly when cert_chain is.
  std::string root_certs;   // The CA that the peer's certificate must be signed by.
};

// True for "unix:..." addresses (also "unix-abstract:...").
bool IsUnixAddress(const std::string& address);

// Credentials for a server listening on `address`. Throws InvalidArgument when `tls` lacks a
// certificate, key or root certificates.
std::shared_ptr<grpc::ServerCredentials> ServerCredentialsFor(const std::string& address,
                                                              const std::optional<TlsConfig>& tls);
// The most milliseconds one connection attempt to `address` may take (TCP connect plus, with
// TLS, the handshake), for a channel's GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, which gRPC uses as
// that bound: short for plaintext (a dead peer is noticed at once), longer for TLS, whose
// handshake took over 100 ms on a loaded 2-core machine and then never completed.
int MinConnectTimeoutMs(const std::string& address, const std::optional<TlsConfig>& tls);
// Credentials for a channel to `address`. Throws InvalidArgument when `tls` lacks root
// certificates or has only one of certificate and key.
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(const std::string& address,
                                                                const std::optional<TlsConfig>& tls);

}  // namespace torchbeast
