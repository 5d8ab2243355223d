package decide

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/metadata"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// InstrumentationName names the tracer and meter of this package.
const InstrumentationName = "github.com/metaproxy/metaproxy/pkg/decide"

// Span names.
const (
	// SpanDecide is the span of one decision, the root of cmd/extproc's part of a request's trace.
	SpanDecide = "metaproxy.decide"
	// SpanCacheLookup is the span of the answer-cache lookup, child of SpanDecide; the resolver's
	// calls (the Neutron HTTP requests) are its children.
	SpanCacheLookup = "metaproxy.cache.lookup"
)

// Span attribute keys. The secret and the signature are never recorded.
const (
	AttrNetworkID    = attribute.Key("metaproxy.network.id")
	AttrRouterID     = attribute.Key("metaproxy.router.id")
	AttrVMAddress    = attribute.Key("metaproxy.vm.address")
	AttrInstanceID   = attribute.Key("metaproxy.instance.id")
	AttrProjectID    = attribute.Key("metaproxy.project.id")
	AttrPortID       = attribute.Key("metaproxy.port.id")
	AttrCacheOutcome = attribute.Key("metaproxy.cache.outcome")
	AttrHTTPStatus   = attribute.Key("http.response.status_code")
)

// Option configures a Decider.
type Option func(*options)

type options struct {
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	source   string
	logLimit LogLimit
}

// WithTracing records a span per decision and per cache lookup on tp, continuing the trace Envoy
// started: W3C traceparent and tracestate from the stream's gRPC metadata, where Envoy's own tracer
// puts its ext_proc client span. Nothing the VM sent is read: not its traceparent, tracestate or
// baggage headers (Envoy does not forward them: cmd/xds's forward_rules), and no baggage from
// anywhere. A nil or no-op tp records nothing and costs nothing.
func WithTracing(tp trace.TracerProvider) Option { return func(o *options) { o.tp = tp } }

// WithMetrics records the metrics in MetricNames on mp. source names the port source in the
// resolver metrics (label source: "neutron", "ports_file", ...).
func WithMetrics(mp metric.MeterProvider, source string) Option {
	return func(o *options) { o.mp, o.source = mp, source }
}

// WithLogLimit replaces the default rate limit of the "not forwarded" log lines.
func WithLogLimit(l LogLimit) Option { return func(o *options) { o.logLimit = l } }

// observer records what the Decider does, beside it: a span per decision and per cache lookup
// (tracing on) and the metrics of MetricNames (metrics on). The Decider calls it at the start and
// end of a decision and around the cache lookup; with both off each call is a nil check.
type observer struct {
	tracer trace.Tracer // nil: no spans
	m      *metrics     // nil: no metrics
}

func newObserver(o options, cacheLen func() int, capacity int) (observer, error) {
	var obs observer
	if _, isNoop := o.tp.(noop.TracerProvider); o.tp != nil && !isNoop {
		obs.tracer = o.tp.Tracer(InstrumentationName)
	}
	if o.mp != nil {
		m, err := newMetrics(o.mp, o.source, cacheLen, capacity)
		if err != nil {
			return observer{}, err
		}
		obs.m = m
	}
	return obs, nil
}

// observation is what begin started for one decision.
type observation struct {
	span  trace.Span // nil unless tracing
	start time.Time  // zero unless metrics
}

// begin starts observing a decision on the stream whose context is ctx.
func (o observer) begin(ctx context.Context) (context.Context, observation) {
	var ob observation
	if o.m != nil {
		ob.start = time.Now()
	}
	if o.tracer != nil {
		ctx, ob.span = o.tracer.Start(envoyTrace(ctx), SpanDecide, trace.WithSpanKind(trace.SpanKindServer))
	}
	return ctx, ob
}

// end records dec and sets its TraceID: the decision span's, or without tracing (for a decision
// that is not 200, which is logged) the trace Envoy propagated.
func (o observer) end(ctx context.Context, ob observation, dec *Decision) {
	switch {
	case ob.span != nil:
		dec.TraceID = ob.span.SpanContext().TraceID()
		endDecision(ob.span, dec)
	case dec.Status != http.StatusOK:
		dec.TraceID = trace.SpanContextFromContext(envoyTrace(ctx)).TraceID()
	}
	if o.m != nil {
		o.m.record(ctx, dec, time.Since(ob.start))
	}
}

// lookupStarted starts the span of a cache lookup for q (nil without tracing).
func (o observer) lookupStarted(ctx context.Context, q resolve.Query) (context.Context, trace.Span) {
	if o.tracer == nil {
		return ctx, nil
	}
	return o.tracer.Start(ctx, SpanCacheLookup, trace.WithAttributes(queryAttrs(nil, q)...))
}

// lookupDone ends the lookup span: Error when the port source gave no answer.
func (o observer) lookupDone(span trace.Span, outcome answercache.Outcome, err error) {
	if span == nil {
		return
	}
	span.SetAttributes(AttrCacheOutcome.String(outcome.String()))
	if err != nil && resultOf(err) == ResultError {
		span.RecordError(err)
		span.SetStatus(codes.Error, "no answer from the port source")
	}
	span.End()
}

func (o observer) novaVerdict(ctx context.Context, status int) {
	if o.m != nil {
		o.m.novaVerdicts.Add(ctx, 1, metric.WithAttributes(attribute.Int("status", status)))
	}
}

func (o observer) logSuppressed(ctx context.Context) {
	if o.m != nil {
		o.m.suppressed.Add(ctx, 1)
	}
}

// watch returns r measured (MetricResolverLookups, MetricResolverDuration) and onEvict counting
// evictions too; both unchanged without metrics.
func (o observer) watch(r resolve.Resolver, onEvict func()) (resolve.Resolver, func()) {
	if o.m == nil {
		return r, onEvict
	}
	return measuredResolver{r: r, m: o.m}, func() {
		o.m.evictions.Add(1)
		if onEvict != nil {
			onEvict()
		}
	}
}

// envoyTrace returns ctx with the remote span context Envoy's tracer put in the stream's gRPC
// metadata, if any: W3C trace context only (traceparent, tracestate), never baggage.
func envoyTrace(ctx context.Context) context.Context {
	return propagation.TraceContext{}.Extract(ctx, mdCarrier{ctx})
}

// endDecision sets the decision's attributes on span and ends it.
func endDecision(span trace.Span, dec *Decision) {
	attrs := make([]attribute.KeyValue, 0, 8)
	attrs = append(attrs, AttrHTTPStatus.Int(dec.Status))
	attrs = queryAttrs(attrs, dec.Query)
	if dec.Outcome != 0 {
		attrs = append(attrs, AttrCacheOutcome.String(dec.Outcome.String()))
	}
	if dec.Instance.InstanceID != "" {
		attrs = append(attrs, AttrInstanceID.String(dec.Instance.InstanceID), AttrProjectID.String(dec.Instance.ProjectID),
			AttrPortID.String(dec.Instance.PortID))
	}
	span.SetAttributes(attrs...)
	if dec.Err != nil {
		span.RecordError(dec.Err)
	}
	if dec.Status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(dec.Status))
	}
	span.End()
}

func queryAttrs(attrs []attribute.KeyValue, q resolve.Query) []attribute.KeyValue {
	switch q.Scope.Kind {
	case resolve.KindNetwork:
		attrs = append(attrs, AttrNetworkID.String(q.Scope.ID))
	case resolve.KindRouter:
		attrs = append(attrs, AttrRouterID.String(q.Scope.ID))
	}
	if q.Addr.IsValid() {
		attrs = append(attrs, AttrVMAddress.String(q.Addr.String()))
	}
	return attrs
}

// mdCarrier reads trace context from the gRPC metadata a stream's context carries (keys are lower
// case), without copying the whole of it.
type mdCarrier struct{ ctx context.Context }

var _ propagation.TextMapCarrier = mdCarrier{}

func (c mdCarrier) Get(key string) string {
	if v := metadata.ValueFromIncomingContext(c.ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (c mdCarrier) Set(string, string) {}
func (c mdCarrier) Keys() []string {
	md, _ := metadata.FromIncomingContext(c.ctx)
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	return keys
}
