// Package telemetry sets up OpenTelemetry for metaproxy's services, with nothing global: a tracer
// provider that exports spans over OTLP as the standard OTEL_* environment variables say (and is a
// no-op, costing next to nothing, when no OTLP endpoint is set), the W3C trace-context propagator
// (no baggage),
// and a meter provider whose instruments are served in the Prometheus text format by an
// http.Handler over the service's own prometheus.Registry.
//
// Environment read (see https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
//
//   - OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: where spans go; with neither
//     set tracing is off.
//   - OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf
//     (the default, as the specification says).
//   - OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: tracing off.
//   - OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, and the
//     exporters' own OTEL_EXPORTER_OTLP_* (headers, TLS, timeout, compression).
//
// Spans are batched and sent at least every second (OTEL_BSP_SCHEDULE_DELAY overrides that), and
// Shutdown flushes what is left.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// DefaultBatchTimeout is how long a finished span may wait before it is exported, unless
// OTEL_BSP_SCHEDULE_DELAY says otherwise. The SDK's own default (5s) is too long for an operator
// looking for the trace of the request that just failed.
const DefaultBatchTimeout = time.Second

// Options describe the service being observed.
type Options struct {
	// ServiceName is service.name unless OTEL_SERVICE_NAME is set, e.g. "metaproxy-extproc".
	ServiceName string
	// Version is service.version.
	Version string
}

// Telemetry holds the providers a service passes to the code it instruments, and how to stop them.
type Telemetry struct {
	// TracerProvider exports spans over OTLP; a no-op provider when tracing is off.
	TracerProvider trace.TracerProvider
	// Tracing says whether TracerProvider records anything. Instrumented code skips span work
	// entirely when it is false.
	Tracing bool
	// Propagator reads and writes W3C trace context (traceparent, tracestate), never baggage.
	Propagator propagation.TextMapPropagator
	// MeterProvider feeds Registry, served by MetricsHandler.
	MeterProvider metric.MeterProvider
	// Registry holds the service's metrics (OpenTelemetry instruments, Go runtime and process
	// collectors). It is not prometheus.DefaultRegisterer.
	Registry *prometheus.Registry
	// Endpoint describes where spans go ("" when tracing is off), for the start-up log line.
	Endpoint string

	shutdown []func(context.Context) error
}

// New returns the telemetry of one service as the OTEL_* environment configures it.
func New(ctx context.Context, o Options) (*Telemetry, error) {
	t := &Telemetry{Propagator: Propagator()}
	res, err := newResource(ctx, o)
	if err != nil {
		return nil, err
	}

	t.Registry = prometheus.NewRegistry()
	if err := t.Registry.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("register the Go runtime collector: %w", err)
	}
	if err := t.Registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("register the process collector: %w", err)
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(t.Registry), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	exporter, endpoint, err := newSpanExporter(ctx)
	if err != nil {
		return nil, err
	}
	mopts := []sdkmetric.Option{sdkmetric.WithReader(exp), sdkmetric.WithResource(res)}
	if exporter == nil && os.Getenv(exemplarFilterEnv) == "" {
		// Without spans there is no exemplar to keep, but the SDK's default filter
		// (trace_based) still looks for a span in the context of every measurement: 3% of
		// cmd/extproc's CPU at 64 streams (perf; docs/benchmarks.md).
		mopts = append(mopts, sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	}
	mp := sdkmetric.NewMeterProvider(mopts...)
	t.MeterProvider = mp
	t.shutdown = append(t.shutdown, mp.Shutdown)
	if exporter == nil {
		t.TracerProvider = noop.NewTracerProvider()
		return t, nil
	}
	var bsp []sdktrace.BatchSpanProcessorOption
	if os.Getenv("OTEL_BSP_SCHEDULE_DELAY") == "" {
		bsp = append(bsp, sdktrace.WithBatchTimeout(DefaultBatchTimeout))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter, bsp...), sdktrace.WithResource(res))
	t.TracerProvider, t.Tracing, t.Endpoint = tp, true, endpoint
	// The tracer provider first: its Shutdown flushes the last spans.
	t.shutdown = append([]func(context.Context) error{tp.Shutdown}, t.shutdown...)
	return t, nil
}

// exemplarFilterEnv is the OpenTelemetry variable that chooses the exemplar filter; when it is set,
// the SDK's reading of it stands.
const exemplarFilterEnv = "OTEL_METRICS_EXEMPLAR_FILTER"

// Propagator returns the propagator metaproxy uses: W3C trace context only. Baggage is neither read
// nor sent: a member a VM could have set would otherwise travel with every request to Neutron.
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// MetricsHandler serves the registry in the Prometheus exposition formats.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{Registry: t.Registry})
}

// Close flushes and stops like Shutdown, bounded by 5 s so that an unreachable collector cannot
// hold the exit, even when ctx is already done; a failure is logged on log.
func (t *Telemetry) Close(ctx context.Context, log *slog.Logger) {
	shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := t.Shutdown(shut); err != nil {
		log.Warn("telemetry shutdown", "error", err)
	}
}

// Shutdown flushes the spans not yet exported and stops the providers. Call it once, with a
// context that bounds how long the flush may take.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		if err := f(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	t.shutdown = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry shutdown: %w", err)
	}
	return nil
}

func newResource(ctx context.Context, o Options) (*resource.Resource, error) {
	attrs := []resource.Option{resource.WithTelemetrySDK(), resource.WithHost()}
	if o.ServiceName != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceName(o.ServiceName)))
	}
	if o.Version != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(o.Version)))
	}
	// FromEnv last: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
	attrs = append(attrs, resource.WithFromEnv())
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	return res, nil
}

// newSpanExporter returns the OTLP exporter the environment asks for, or nil when tracing is off.
func newSpanExporter(ctx context.Context) (sdktrace.SpanExporter, string, error) {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return nil, "", nil
	}
	switch e := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); e {
	case "none":
		return nil, "", nil
	case "", "otlp":
	default:
		return nil, "", fmt.Errorf("OTEL_TRACES_EXPORTER=%q: metaproxy exports traces with otlp (or none)", e)
	}
	endpoint := firstSet("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
	if endpoint == "" {
		return nil, "", nil
	}
	protocol := firstSet("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch protocol {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "", "http/protobuf":
		protocol = "http/protobuf"
		exp, err = otlptracehttp.New(ctx)
	default:
		return nil, "", fmt.Errorf("OTLP protocol %q: want grpc or http/protobuf", protocol)
	}
	if err != nil {
		return nil, "", fmt.Errorf("OTLP trace exporter (%s to %s): %w", protocol, endpoint, err)
	}
	return exp, protocol + " " + endpoint, nil
}

func firstSet(keys ...string) string {
	for _, k := range keys {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			return v
		}
	}
	return ""
}
