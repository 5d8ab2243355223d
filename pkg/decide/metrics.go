package decide

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
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

// metrics are the Decider's instruments. The hot path adds to an atomic and records the latency
// histogram: request, cache-lookup and eviction counts are atomics that observable counters read
// when /metrics is scraped, so that counting takes no lock shared by every decision.
type metrics struct {
	resolves, suppressed, novaVerdicts metric.Int64Counter
	duration, resolveLatency           metric.Float64Histogram

	// requests[outcome][status]: the last status slot counts statuses not in statuses.
	requests  [len(outcomes)][len(statuses) + 1]atomic.Uint64
	evictions atomic.Uint64

	outcomeRec [len(outcomes)][]metric.RecordOption
	resultOpts map[string][]metric.AddOption
	sourceOpts []metric.RecordOption
}

func newMetrics(mp metric.MeterProvider, source string, cacheLen func() int, capacity int) (*metrics, error) {
	meter := mp.Meter(InstrumentationName)
	m := &metrics{resultOpts: map[string][]metric.AddOption{}}
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		add(err)
		return c
	}
	observed := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		add(err)
		return c
	}
	gauge := func(name, desc string) metric.Int64ObservableGauge {
		g, err := meter.Int64ObservableGauge(name, metric.WithUnit("{entry}"), metric.WithDescription(desc))
		add(err)
		return g
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(LatencyBuckets()...))
		add(err)
		return h
	}
	requests := observed("metaproxy.extproc.requests", "{request}",
		"Metadata requests decided, by cache outcome (none: rejected before the lookup) and the HTTP status decided (200: forwarded to nova signed).")
	lookups := observed("metaproxy.extproc.cache.lookups", "{lookup}",
		"Answer cache lookups by outcome: hit, miss (asked the port source), coalesced (waited for another request's lookup), stale (served an expired answer while the source is unavailable).")
	evictions := observed("metaproxy.extproc.cache.evictions", "{entry}",
		"Answer cache entries evicted to make room (the cache is full: raise --cache-size).")
	entries := gauge("metaproxy.extproc.cache.entries", "Answers in the answer cache.")
	capacityGauge := gauge("metaproxy.extproc.cache.capacity", "Maximum answers the answer cache holds (--cache-size).")
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
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	// The attribute sets the hot path and the scrape use, made once.
	var requestSets [len(outcomes)][len(statuses) + 1]metric.ObserveOption
	var lookupSets [len(outcomes)]metric.ObserveOption
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
			requestSets[oi][si] = metric.WithAttributeSet(attribute.NewSet(outcome, attribute.String("status", status)))
		}
		lookupSets[oi] = metric.WithAttributeSet(attribute.NewSet(outcome))
		m.outcomeRec[oi] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(outcome))}
	}
	src := attribute.String("source", source)
	m.sourceOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(src))}
	bg := context.Background()
	for _, r := range []string{ResultFound, ResultNotFound, ResultAmbiguous, ResultError} {
		m.resultOpts[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(src, attribute.String("result", r)))}
		m.resolves.Add(bg, 0, m.resultOpts[r]...) // exported from the start: alerts see the first increase
	}
	m.suppressed.Add(bg, 0)
	m.novaVerdicts.Add(bg, 0)
	_, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for oi := range outcomes {
			var total uint64
			for si := range m.requests[oi] {
				if n := m.requests[oi][si].Load(); n > 0 {
					total += n
					o.ObserveInt64(requests, int64(n), requestSets[oi][si])
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
	m.requests[oi][si].Add(1)
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
