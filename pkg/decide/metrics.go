package decide

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// Metric names as exported on /metrics (OpenTelemetry instrument names translated by the
// Prometheus exporter: dots become underscores, seconds and _total suffixes are added).
const (
	MetricRequests           = "metaproxy_extproc_requests_total"
	MetricDecisionDuration   = "metaproxy_extproc_decision_duration_seconds"
	MetricCacheLookups       = "metaproxy_extproc_cache_lookups_total"
	MetricCacheEvictions     = "metaproxy_extproc_cache_evictions_total"
	MetricCacheEntries       = "metaproxy_extproc_cache_entries"
	MetricCacheCapacity      = "metaproxy_extproc_cache_capacity"
	MetricResolverLookups    = "metaproxy_extproc_resolver_lookups_total"
	MetricResolverDuration   = "metaproxy_extproc_resolver_lookup_duration_seconds"
	MetricLogLinesSuppressed = "metaproxy_extproc_log_lines_suppressed_total"
	MetricNovaVerdicts       = "metaproxy_extproc_nova_verdicts_total"
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

// outcomes and statuses index the attribute sets the hot path reuses; the last status slot is
// "other".
var (
	outcomes = [...]answercache.Outcome{0, answercache.Hit, answercache.Miss, answercache.Coalesced, answercache.Stale}
	statuses = [...]int{http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusInternalServerError,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout}
)

// metrics are the Decider's instruments, with the attribute sets of the hot path made once.
type metrics struct {
	requests, lookups, evictions, resolves, suppressed, novaVerdicts metric.Int64Counter
	duration, resolveLatency                                         metric.Float64Histogram

	requestOpts [len(outcomes)][len(statuses) + 1][]metric.AddOption
	outcomeAdd  [len(outcomes)][]metric.AddOption
	outcomeRec  [len(outcomes)][]metric.RecordOption
	resultOpts  map[string][]metric.AddOption
	sourceOpts  []metric.RecordOption
}

func newMetrics(mp metric.MeterProvider, source string, cacheLen func() int, capacity int) (*metrics, error) {
	meter := mp.Meter(InstrumentationName)
	m := &metrics{resultOpts: map[string][]metric.AddOption{}}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(LatencyBuckets()...))
		errs = append(errs, err)
		return h
	}
	m.requests = counter("metaproxy.extproc.requests", "{request}",
		"Metadata requests decided, by cache outcome (none: rejected before the lookup) and the HTTP status decided (200: forwarded to nova signed).")
	m.lookups = counter("metaproxy.extproc.cache.lookups", "{lookup}",
		"Answer cache lookups by outcome: hit, miss (asked the port source), coalesced (waited for another request's lookup), stale (served an expired answer while the source is unavailable).")
	m.evictions = counter("metaproxy.extproc.cache.evictions", "{entry}",
		"Answer cache entries evicted to make room (the cache is full: raise --cache-size).")
	m.resolves = counter("metaproxy.extproc.resolver.lookups", "{lookup}",
		"Lookups sent to the port source (Neutron) by source and result: found, not_found, ambiguous, error.")
	m.suppressed = counter("metaproxy.extproc.log_lines.suppressed", "{line}",
		"'metadata request not forwarded' log lines dropped by the log rate limit.")
	m.novaVerdicts = counter("metaproxy.extproc.nova.verdicts", "{response}",
		"Nova's response status to the first request of a VM after each cache fill (the requests whose nova answer cmd/extproc asks to see); 403 means nova refused the signature.")
	m.duration = histogram("metaproxy.extproc.decision.duration",
		"Time to decide one metadata request (decode, cache lookup, Neutron on a miss), by cache outcome.")
	m.resolveLatency = histogram("metaproxy.extproc.resolver.lookup.duration",
		"Time the port source (Neutron) took to answer one lookup, by source.")
	_, err := meter.Int64ObservableGauge("metaproxy.extproc.cache.entries", metric.WithUnit("{entry}"),
		metric.WithDescription("Answers in the answer cache."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error { o.Observe(int64(cacheLen())); return nil }))
	errs = append(errs, err)
	_, err = meter.Int64ObservableGauge("metaproxy.extproc.cache.capacity", metric.WithUnit("{entry}"),
		metric.WithDescription("Maximum answers the answer cache holds (--cache-size)."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error { o.Observe(int64(capacity)); return nil }))
	if err := errors.Join(append(errs, err)...); err != nil {
		return nil, err
	}

	bg := context.Background()
	for oi, o := range outcomes {
		name := "none"
		if o != 0 {
			name = o.String()
		}
		outcome := attribute.String("outcome", name)
		for si := range len(statuses) + 1 {
			status := "other"
			if si < len(statuses) {
				status = strconv.Itoa(statuses[si])
			}
			m.requestOpts[oi][si] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(outcome, attribute.String("status", status)))}
		}
		set := metric.WithAttributeSet(attribute.NewSet(outcome))
		m.outcomeAdd[oi], m.outcomeRec[oi] = []metric.AddOption{set}, []metric.RecordOption{set}
		if o != 0 {
			m.lookups.Add(bg, 0, m.outcomeAdd[oi]...) // exported from the start: alerts see the first increase
		}
	}
	src := attribute.String("source", source)
	m.sourceOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(src))}
	for _, r := range []string{ResultFound, ResultNotFound, ResultAmbiguous, ResultError} {
		m.resultOpts[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(src, attribute.String("result", r)))}
		m.resolves.Add(bg, 0, m.resultOpts[r]...)
	}
	m.evictions.Add(bg, 0)
	m.suppressed.Add(bg, 0)
	m.novaVerdicts.Add(bg, 0)
	return m, nil
}

// record counts one decision that took elapsed.
func (m *metrics) record(ctx context.Context, dec *Decision, elapsed time.Duration) {
	oi := 0
	for i, o := range outcomes {
		if o == dec.Outcome {
			oi = i
		}
	}
	si := len(statuses)
	for i, c := range statuses {
		if c == dec.Status {
			si = i
		}
	}
	m.requests.Add(ctx, 1, m.requestOpts[oi][si]...)
	if oi != 0 {
		m.lookups.Add(ctx, 1, m.outcomeAdd[oi]...)
	}
	m.duration.Record(ctx, elapsed.Seconds(), m.outcomeRec[oi]...)
}

// measuredResolver measures every lookup the cache sends to the port source.
type measuredResolver struct {
	r resolve.Resolver
	m *metrics
}

// Resolve implements resolve.Resolver.
func (mr measuredResolver) Resolve(ctx context.Context, q resolve.Query) (resolve.Instance, error) {
	start := time.Now()
	inst, err := mr.r.Resolve(ctx, q)
	mr.m.resolveLatency.Record(ctx, time.Since(start).Seconds(), mr.m.sourceOpts...)
	mr.m.resolves.Add(ctx, 1, mr.m.resultOpts[resultOf(err)]...)
	return inst, err
}

// resultOf classifies a resolver answer for MetricResolverLookups.
func resultOf(err error) string {
	var ambiguous *resolve.AmbiguousError
	switch {
	case err == nil:
		return ResultFound
	case errors.Is(err, resolve.ErrNotFound):
		return ResultNotFound
	case errors.As(err, &ambiguous):
		return ResultAmbiguous
	default:
		return ResultError
	}
}
