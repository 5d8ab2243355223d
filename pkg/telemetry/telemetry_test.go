package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// clearEnv unsets every variable that would turn tracing on, for the test's duration.
func clearEnv(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_SERVICE_NAME"} {
		t.Setenv(k, "")
	}
}

// receiver is an OTLP trace collector that keeps the names of the spans it receives.
type receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	names []string
	svc   []string
}

func (r *receiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				r.svc = append(r.svc, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.names = append(r.names, s.GetName())
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *receiver) has(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.names {
		if n == name {
			return true
		}
	}
	return false
}

func grpcReceiver(t *testing.T) (*receiver, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, r)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return r, "http://" + l.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTracingOffWithoutEndpoint(t *testing.T) {
	clearEnv(t)
	tel, err := New(context.Background(), Options{ServiceName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tel.Tracing {
		t.Error("tracing on with no endpoint")
	}
	if _, ok := tel.TracerProvider.(noop.TracerProvider); !ok {
		t.Errorf("tracer provider %T, want the no-op one", tel.TracerProvider)
	}
}

func TestTracingOffSwitches(t *testing.T) {
	for name, env := range map[string][2]string{
		"sdk disabled":  {"OTEL_SDK_DISABLED", "true"},
		"exporter none": {"OTEL_TRACES_EXPORTER", "none"},
	} {
		t.Run(name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			t.Setenv(env[0], env[1])
			tel, err := New(context.Background(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			if tel.Tracing {
				t.Errorf("%s=%s: tracing on", env[0], env[1])
			}
		})
	}
}

func TestBadProtocolIsAnError(t *testing.T) {
	clearEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	if _, err := New(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "http/json") {
		t.Fatalf("err = %v", err)
	}
}

// TestGRPCExportWithinABatchTimeout: with OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:PORT and
// OTEL_EXPORTER_OTLP_PROTOCOL=grpc (what the e2e suite sets), a span reaches the collector without
// a shutdown, after the batch timeout.
func TestGRPCExportWithinABatchTimeout(t *testing.T) {
	clearEnv(t)
	r, endpoint := grpcReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	tel, err := New(context.Background(), Options{ServiceName: "default-name"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if !tel.Tracing || !strings.HasPrefix(tel.Endpoint, "grpc ") {
		t.Fatalf("tracing %v to %q", tel.Tracing, tel.Endpoint)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "batched")
	span.End()
	waitFor(t, "span exported", func() bool { return r.has("batched") })
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.svc) == 0 || r.svc[0] != "from-env" {
		t.Errorf("service.name %v, want OTEL_SERVICE_NAME's", r.svc)
	}
}

// TestShutdownFlushes: spans still queued are sent by Shutdown.
func TestShutdownFlushes(t *testing.T) {
	clearEnv(t)
	r, endpoint := grpcReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "3600000") // an hour: only Shutdown can send it
	tel, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "queued")
	span.End()
	if r.has("queued") {
		t.Fatal("exported before shutdown: the test proves nothing")
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !r.has("queued") {
		t.Error("Shutdown did not flush the queued span")
	}
}

// TestHTTPExport: the default protocol is http/protobuf, to <endpoint>/v1/traces.
func TestHTTPExport(t *testing.T) {
	clearEnv(t)
	r := &receiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var msg collectortrace.ExportTraceServiceRequest
		if req.URL.Path != "/v1/traces" || proto.Unmarshal(body, &msg) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		r.Export(req.Context(), &msg)
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	tel, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "over-http")
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !r.has("over-http") {
		t.Error("span not received over OTLP/HTTP")
	}
}

// newCounter returns the telemetry the environment configures and a counter named
// metaproxy.test.things on its meter provider; the telemetry is shut down when the test ends.
func newCounter(t *testing.T) (*Telemetry, metric.Int64Counter) {
	t.Helper()
	tel, err := New(context.Background(), Options{ServiceName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	c, err := tel.MeterProvider.Meter("test").Int64Counter("metaproxy.test.things")
	if err != nil {
		t.Fatal(err)
	}
	return tel, c
}

// TestMetricsOnOwnRegistry: instruments appear on MetricsHandler, and nothing is registered with
// Prometheus' global registry.
func TestMetricsOnOwnRegistry(t *testing.T) {
	clearEnv(t)
	tel, c := newCounter(t)
	c.Add(context.Background(), 3)
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{"metaproxy_test_things_total 3", "go_goroutines ", "process_"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	fams, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "metaproxy_") {
			t.Errorf("%s is on the global registry", f.GetName())
		}
	}
}

// TestExemplarsOnlyWithTracing: with tracing off no exemplar is looked for (the SDK's default
// filter costs a context lookup per measurement), unless OTEL_METRICS_EXEMPLAR_FILTER asks; a
// sampled span in the context is what would make the default filter keep one.
func TestExemplarsOnlyWithTracing(t *testing.T) {
	sampled := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled}))
	for filter, want := range map[string]bool{"": false, "trace_based": true} {
		t.Run("OTEL_METRICS_EXEMPLAR_FILTER="+filter, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(exemplarFilterEnv, filter)
			tel, c := newCounter(t)
			c.Add(sampled, 1)
			fams, err := tel.Registry.Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := false
			for _, f := range fams {
				if f.GetName() == "metaproxy_test_things_total" {
					got = f.GetMetric()[0].GetCounter().GetExemplar() != nil
				}
			}
			if got != want {
				t.Errorf("exemplar recorded: %v, want %v", got, want)
			}
		})
	}
}
