"""What the service tells its operators beyond metrics: OpenTelemetry traces (:mod:`.tracing`, off
unless ``OTEL_*`` asks), log lines as text or JSON (:mod:`.log_format`), and I/O faults classified and
recorded once per episode (:mod:`.io_faults`)."""

__all__ = ["io_faults", "log_format", "tracing"]
