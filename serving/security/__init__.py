"""Transport security and caller rights of the gRPC server, free of gRPC where it can be.

* :mod:`~serving.security.tokens`: the ``--auth-tokens`` file (callers, token hashes, scopes,
  rates) and constant-time token look-up;
* :mod:`~serving.security.rate_limit`: per-caller token buckets;
* :mod:`~serving.security.tls`: the ``--tls-*`` files, validated and turned into server
  credentials that can be rotated while serving;
* :mod:`~serving.security.reloader`: re-reads both on change and on SIGHUP, keeping the
  running ones when a new file is bad;
* :mod:`~serving.security.selfsigned`: throwaway CAs and certificates for tests, benchmarks
  and local trials.

The gRPC side: :mod:`~serving.security.auth` (the interceptor that checks every call's token,
scope and rate) and :mod:`~serving.security.access` (what the server loads at start-up, how it
binds its port, the secure-by-default check); status codes are decided in
:mod:`serving.api.interceptors` only. Secrets (tokens, private keys)
never appear in a log line, an error message or a metric: only caller names and file paths do.
"""

__all__ = ["access", "auth", "rate_limit", "reloader", "selfsigned", "tls", "tokens"]
