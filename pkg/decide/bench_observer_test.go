package decide

import (
	"context"
	"log/slog"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/metadata"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/sign"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
)

// The hot-path benchmarks below compare with BenchmarkDecideHit (no instrumentation):
//
//	go test -run '^$' -bench 'DecideHit' -benchmem -count 6 ./pkg/decide
func benchDecide(b *testing.B, opts ...Option) {
	b.Helper()
	s, _ := sign.New([]byte("s3cr3t"))
	d, err := New(oneVM{}, s, answercache.Options{}, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	r := req("10.0.0.5:41234")
	d.RequestHeaders(ctx, r)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d.RequestHeaders(ctx, r)
		}
	})
}

// BenchmarkDecideHitTracingOff is the hot path instrumented with tracing off (the no-op tracer
// provider cmd/extproc gets when no OTEL_* endpoint is set) and no metrics: it must stay within 5%
// of BenchmarkDecideHit.
func BenchmarkDecideHitTracingOff(b *testing.B) {
	benchDecide(b, WithTracing(tracenoop.NewTracerProvider()))
}

// BenchmarkDecideHitTracingOffMetrics is the hot path as cmd/extproc runs it by default: tracing off
// and the metrics served on /metrics (telemetry.New's meter provider).
func BenchmarkDecideHitTracingOffMetrics(b *testing.B) {
	tel, err := telemetry.New(context.Background(), telemetry.Options{ServiceName: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tel.Tracing {
		b.Skip("an OTEL_* endpoint is set")
	}
	benchDecide(b, WithTracing(tel.TracerProvider), WithMetrics(tel.MeterProvider, "bench"))
}

// BenchmarkDecideHitTracingOn records (and drops) a sampled span tree per decision, for comparison.
func BenchmarkDecideHitTracingOn(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewNoopExporter()))
	defer tp.Shutdown(context.Background())
	benchDecide(b, WithTracing(tp))
}
