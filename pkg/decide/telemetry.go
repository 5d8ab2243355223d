package decide

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
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
	// SpanCacheLookup is the span of the port-cache lookup, child of SpanDecide; the resolver's
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

// Metric names as exported on /metrics (OpenTelemetry instrument names translated by the
// Prometheus exporter: dots become underscores, seconds and _total suffixes are added).
const (
	MetricRequests             = "metaproxy_extproc_requests_total"
	MetricDecisionDuration     = "metaproxy_extproc_decision_duration_seconds"
	MetricCacheLookups         = "metaproxy_extproc_cache_lookups_total"
	MetricCacheEvictions       = "metaproxy_extproc_cache_evictions_total"
	MetricCacheEntries         = "metaproxy_extproc_cache_entries"
	MetricCacheCapacity        = "metaproxy_extproc_cache_capacity"
	MetricResolverLookups      = "metaproxy_extproc_resolver_lookups_total"
	MetricResolverDuration     = "metaproxy_extproc_resolver_lookup_duration_seconds"
	MetricLogLinesSuppressed   = "metaproxy_extproc_log_lines_suppressed_total"
	MetricNovaVerdicts         = "metaproxy_extproc_nova_verdicts_total"
	instrumentNovaVerdicts     = "metaproxy.extproc.nova.verdicts"
	instrumentRequests         = "metaproxy.extproc.requests"
	instrumentDecisionDuration = "metaproxy.extproc.decision.duration"
	instrumentCacheLookups     = "metaproxy.extproc.cache.lookups"
	instrumentCacheEvictions   = "metaproxy.extproc.cache.evictions"
	instrumentCacheEntries     = "metaproxy.extproc.cache.entries"
	instrumentCacheCapacity    = "metaproxy.extproc.cache.capacity"
	instrumentResolverLookups  = "metaproxy.extproc.resolver.lookups"
	instrumentResolverDuration = "metaproxy.extproc.resolver.lookup.duration"
	instrumentLogSuppressed    = "metaproxy.extproc.log_lines.suppressed"
)

// MetricNames lists every metric family a Decider with metrics exports.
func MetricNames() []string {
	return []string{MetricRequests, MetricDecisionDuration, MetricCacheLookups, MetricCacheEvictions, MetricCacheEntries,
		MetricCacheCapacity, MetricResolverLookups, MetricResolverDuration, MetricLogLinesSuppressed, MetricNovaVerdicts}
}

// LatencyBuckets are the histogram boundaries, in seconds, of the decision and resolver latencies:
// from a cache hit (tens of microseconds) to a Neutron lookup that times out (seconds).
func LatencyBuckets() []float64 {
	return []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
}

// Resolver lookup results (label result of MetricResolverLookups).
const (
	ResultFound     = "found"
	ResultNotFound  = "not_found"
	ResultAmbiguous = "ambiguous"
	ResultError     = "error"
)

// Option configures a Decider.
type Option func(*Decider)

// WithTracing records a span per decision and per cache lookup on tp, continuing the trace Envoy
// started: W3C traceparent and tracestate from the stream's gRPC metadata, where Envoy's own tracer
// puts its ext_proc client span. Nothing the VM sent is read: not its traceparent, tracestate or
// baggage headers (Envoy does not forward them: cmd/xds's forward_rules), and no baggage from
// anywhere. A nil or no-op tp records nothing and costs nothing.
func WithTracing(tp trace.TracerProvider) Option {
	return func(d *Decider) {
		if _, isNoop := tp.(noop.TracerProvider); tp == nil || isNoop {
			return
		}
		d.tracer = tp.Tracer(InstrumentationName)
	}
}

// WithMetrics records the metrics in MetricNames on mp. source names the port source in the
// resolver metrics (label source: "neutron", "ports_file", ...).
func WithMetrics(mp metric.MeterProvider, source string) Option {
	return func(d *Decider) {
		d.metricsProvider, d.source = mp, source
	}
}

// WithLogLimit replaces the default rate limit of the "not forwarded" log lines.
func WithLogLimit(l LogLimit) Option {
	return func(d *Decider) { d.logLimit = l }
}

// outcomes and statuses index the precomputed attribute sets of the hot path.
var (
	outcomeNames = [...]string{"none", answercache.Hit.String(), answercache.Miss.String(), answercache.Coalesced.String(), answercache.Stale.String()}
	statusCodes  = [...]int{http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusInternalServerError,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout}
)

// metrics are the Decider's instruments. The hot path only adds to an atomic counter and records
// the latency histogram: request and cache-lookup counts are kept in atomics and reported by
// observable counters when /metrics is scraped, so that counting costs no attribute-set lookup.
type metrics struct {
	duration       metric.Float64Histogram
	resolves       metric.Int64Counter
	resolveLatency metric.Float64Histogram
	suppressed     metric.Int64Counter
	novaVerdicts   metric.Int64Counter

	// requests[outcome][status index]; the last status slot counts statuses not in statusCodes.
	requests  [len(outcomeNames)][len(statusCodes) + 1]atomic.Uint64
	evictions atomic.Uint64

	durationOps [len(outcomeNames)][]metric.RecordOption
	sourceOpts  []metric.RecordOption
	resultOpts  map[string][]metric.AddOption
}

func newMetrics(mp metric.MeterProvider, source string, cacheLen func() int, capacity int) (*metrics, error) {
	m := &metrics{}
	meter := mp.Meter(InstrumentationName)
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var err error
	m.duration, err = meter.Float64Histogram(instrumentDecisionDuration, metric.WithUnit("s"),
		metric.WithDescription("Time to decide one metadata request (decode, cache lookup, Neutron on a miss), by cache outcome."),
		metric.WithExplicitBucketBoundaries(LatencyBuckets()...))
	add(err)
	m.resolves, err = meter.Int64Counter(instrumentResolverLookups, metric.WithUnit("{lookup}"),
		metric.WithDescription("Lookups sent to the port source (Neutron) by source and result: found, not_found, ambiguous, error."))
	add(err)
	m.resolveLatency, err = meter.Float64Histogram(instrumentResolverDuration, metric.WithUnit("s"),
		metric.WithDescription("Time the port source (Neutron) took to answer one lookup, by source."),
		metric.WithExplicitBucketBoundaries(LatencyBuckets()...))
	add(err)
	m.suppressed, err = meter.Int64Counter(instrumentLogSuppressed, metric.WithUnit("{line}"),
		metric.WithDescription("'metadata request not forwarded' log lines dropped by the log rate limit."))
	add(err)
	m.novaVerdicts, err = meter.Int64Counter(instrumentNovaVerdicts, metric.WithUnit("{response}"),
		metric.WithDescription("Nova's response status to the first request of a VM after each cache fill (the requests whose nova answer cmd/extproc asks to see); 403 means nova refused the signature."))
	add(err)
	requests, err := meter.Int64ObservableCounter(instrumentRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Metadata requests decided, by cache outcome (none: rejected before the lookup) and the HTTP status decided (200: forwarded to nova signed)."))
	add(err)
	lookups, err := meter.Int64ObservableCounter(instrumentCacheLookups, metric.WithUnit("{lookup}"),
		metric.WithDescription("Port cache lookups by outcome: hit, miss (asked the port source), coalesced (waited for another request's lookup), stale (served an expired answer while the source is unavailable)."))
	add(err)
	evictions, err := meter.Int64ObservableCounter(instrumentCacheEvictions, metric.WithUnit("{entry}"),
		metric.WithDescription("Port cache entries evicted to make room (the cache is full: raise --cache-size)."))
	add(err)
	entries, err := meter.Int64ObservableGauge(instrumentCacheEntries, metric.WithUnit("{entry}"),
		metric.WithDescription("Answers in the port cache."))
	add(err)
	capacityGauge, err := meter.Int64ObservableGauge(instrumentCacheCapacity, metric.WithUnit("{entry}"),
		metric.WithDescription("Maximum answers the port cache holds (--cache-size)."))
	add(err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	// The attribute sets the callback reports, built once.
	var requestSets [len(outcomeNames)][len(statusCodes)]metric.ObserveOption
	var lookupSets [len(outcomeNames)]metric.ObserveOption
	for oi, o := range outcomeNames {
		outcome := attribute.String("outcome", o)
		for si, code := range statusCodes {
			requestSets[oi][si] = metric.WithAttributeSet(attribute.NewSet(outcome, attribute.String("status", strconv.Itoa(code))))
		}
		lookupSets[oi] = metric.WithAttributeSet(attribute.NewSet(outcome))
		m.durationOps[oi] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(outcome))}
	}
	src := attribute.String("source", source)
	m.sourceOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(src))}
	m.resultOpts = map[string][]metric.AddOption{}
	for _, r := range []string{ResultFound, ResultNotFound, ResultAmbiguous, ResultError} {
		m.resultOpts[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(src, attribute.String("result", r)))}
		// Exported from the start, so that the first error is an increase alerts can see.
		m.resolves.Add(context.Background(), 0, m.resultOpts[r]...)
	}
	m.suppressed.Add(context.Background(), 0)
	m.novaVerdicts.Add(context.Background(), 0)
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for oi := range outcomeNames {
			var total uint64
			for si := range m.requests[oi] {
				n := m.requests[oi][si].Load()
				total += n
				if n == 0 {
					continue
				}
				if si < len(statusCodes) {
					o.ObserveInt64(requests, int64(n), requestSets[oi][si])
				} else {
					o.ObserveInt64(requests, int64(n), metric.WithAttributes(attribute.String("outcome", outcomeNames[oi]), attribute.String("status", "other")))
				}
			}
			if oi != 0 {
				o.ObserveInt64(lookups, int64(total), lookupSets[oi])
			}
		}
		o.ObserveInt64(evictions, int64(m.evictions.Load()))
		o.ObserveInt64(entries, int64(cacheLen()))
		o.ObserveInt64(capacityGauge, int64(capacity))
		return nil
	}, requests, lookups, evictions, entries, capacityGauge)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// record counts one decision that took elapsed.
func (m *metrics) record(ctx context.Context, dec *Decision, elapsed time.Duration) {
	oi := int(dec.Outcome)
	if oi >= len(outcomeNames) {
		oi = 0
	}
	si := len(statusCodes)
	for i, c := range statusCodes {
		if c == dec.Status {
			si = i
			break
		}
	}
	m.requests[oi][si].Add(1)
	m.duration.Record(ctx, elapsed.Seconds(), m.durationOps[oi]...)
}

// instrumentedResolver measures every lookup the cache sends to the port source.
type instrumentedResolver struct {
	r resolve.Resolver
	m *metrics
}

var _ resolve.Resolver = instrumentedResolver{}

// Resolve implements resolve.Resolver.
func (ir instrumentedResolver) Resolve(ctx context.Context, q resolve.Query) (resolve.Instance, error) {
	start := time.Now()
	inst, err := ir.r.Resolve(ctx, q)
	ir.m.resolveLatency.Record(ctx, time.Since(start).Seconds(), ir.m.sourceOpts...)
	var ambiguous *resolve.AmbiguousError
	result := ResultFound
	switch {
	case err == nil:
	case errors.Is(err, resolve.ErrNotFound):
		result = ResultNotFound
	case errors.As(err, &ambiguous):
		result = ResultAmbiguous
	default:
		result = ResultError
	}
	ir.m.resolves.Add(ctx, 1, ir.m.resultOpts[result]...)
	return inst, err
}

// startDecision starts the decision span, continuing the trace Envoy propagated in md.
func (d *Decider) startDecision(ctx context.Context, md metadata.MD) (context.Context, trace.Span) {
	return d.tracer.Start(envoyTrace(ctx, md), SpanDecide, trace.WithSpanKind(trace.SpanKindServer))
}

// envoyTrace returns ctx with the remote span context Envoy's tracer put in the stream's gRPC
// metadata, if any: W3C trace context only (traceparent, tracestate), never baggage.
func envoyTrace(ctx context.Context, md metadata.MD) context.Context {
	return propagation.TraceContext{}.Extract(ctx, mdCarrier(md))
}

// endDecision sets the decision's attributes on span and ends it.
func endDecision(span trace.Span, dec *Decision) {
	attrs := make([]attribute.KeyValue, 0, 8)
	attrs = append(attrs, AttrHTTPStatus.Int(dec.Status))
	attrs = appendQueryAttrs(attrs, dec.Query)
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

func appendQueryAttrs(attrs []attribute.KeyValue, q resolve.Query) []attribute.KeyValue {
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

// tracedLookup asks the cache inside a lookup span.
func (d *Decider) tracedLookup(ctx context.Context, q resolve.Query) (answer, answercache.Outcome, error) {
	ctx, span := d.tracer.Start(ctx, SpanCacheLookup, trace.WithAttributes(appendQueryAttrs(nil, q)...))
	a, outcome, err := d.cache.Lookup(ctx, q)
	span.SetAttributes(AttrCacheOutcome.String(outcome.String()))
	var ambiguous *resolve.AmbiguousError
	if err != nil && !errors.Is(err, resolve.ErrNotFound) && !errors.As(err, &ambiguous) {
		span.RecordError(err)
		span.SetStatus(codes.Error, "no answer from the port source")
	}
	span.End()
	return a, outcome, err
}

// mdCarrier reads trace context from gRPC metadata (keys are lower case).
type mdCarrier metadata.MD

var _ propagation.TextMapCarrier = mdCarrier(nil)

func (c mdCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (c mdCarrier) Set(string, string) {}
func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
