package telemetry

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// HTTPTransport wraps base (http.DefaultTransport when nil) so that every request it carries is a
// client span of tp named "<peer> <METHOD> <path>" (e.g. "neutron GET /v2.0/ports"), child of the
// span in the request's context, and carries that trace context to the server with prop. Only
// spans are recorded: request headers (tokens) are not, and no metrics are added.
func HTTPTransport(base http.RoundTripper, tp trace.TracerProvider, prop propagation.TextMapPropagator, peer string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return otelhttp.NewTransport(base,
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(prop),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return peer + " " + r.Method + " " + r.URL.Path
		}),
	)
}
