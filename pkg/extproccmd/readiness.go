package extproccmd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"go.opentelemetry.io/otel/metric"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// readinessResolver tells readiness how real lookups fare: an answer from Neutron (even "no such
// port") proves it works, an unavailable error counts as a failure, like a failed probe.
type readinessResolver struct {
	r     resolve.Resolver
	ready *readiness
}

var _ resolve.Resolver = readinessResolver{}

// Resolve implements resolve.Resolver.
func (rr readinessResolver) Resolve(ctx context.Context, q resolve.Query) (resolve.Instance, error) {
	inst, err := rr.r.Resolve(ctx, q)
	var ambiguous *resolve.AmbiguousError
	switch {
	case err == nil, errors.Is(err, resolve.ErrNotFound), errors.As(err, &ambiguous):
		rr.ready.markOK(time.Now())
	case errors.Is(err, resolve.ErrUnavailable) && ctx.Err() == nil:
		rr.ready.markErr(err)
	}
	return inst, err
}

// probeNeutron asks Neutron for one port id: cheap, and it proves credentials and reachability.
func probeNeutron(ctx context.Context, c *gophercloud.ServiceClient, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := c.Get(ctx, c.ServiceURL("ports")+"?limit=1&fields=id", nil, &gophercloud.RequestOpts{OkCodes: []int{200}})
	if err != nil {
		return fmt.Errorf("neutron %s: %w", c.Endpoint, err)
	}
	return nil
}

// readiness tracks whether the service can identify VMs: the port source answered at least once,
// and, for Neutron, not longer ago than the cache can cover (TTL + stale window).
type readiness struct {
	probe func(context.Context) error // nil: the source is local and always answers
	// cacheCover is how long after the source's last answer cached answers can still stand in for
	// it: the cache's TTL plus its stale window.
	cacheCover time.Duration

	mu       sync.Mutex
	lastOK   time.Time
	lastErr  error
	becameOK bool // readiness as last reported by watch
}

func (r *readiness) markOK(t time.Time) {
	r.mu.Lock()
	if t.After(r.lastOK) {
		r.lastOK = t
	}
	r.lastErr = nil
	r.mu.Unlock()
}

func (r *readiness) markErr(err error) {
	r.mu.Lock()
	r.lastErr = err
	r.mu.Unlock()
}

// Readiness metrics.
const (
	MetricReady                = "metaproxy_extproc_ready"
	MetricPortSourceLastUpSecs = "metaproxy_extproc_port_source_last_success_timestamp_seconds"
)

// instrument reports readiness on mp: MetricReady (1 ready, 0 not) and MetricPortSourceLastUpSecs.
func (r *readiness) instrument(mp metric.MeterProvider) error {
	meter := mp.Meter("github.com/metaproxy/metaproxy/pkg/extproccmd")
	ready, err1 := meter.Int64ObservableGauge("metaproxy.extproc.ready",
		metric.WithDescription("1 when cmd/extproc is ready (/readyz answers 200), else 0."))
	last, err2 := meter.Float64ObservableGauge("metaproxy.extproc.port_source.last_success_timestamp", metric.WithUnit("s"),
		metric.WithDescription("Unix time of the port source's last successful answer (probe or lookup); 0 before the first."))
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	_, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		ok, _ := r.state()
		v := int64(0)
		if ok {
			v = 1
		}
		o.ObserveInt64(ready, v)
		r.mu.Lock()
		t := r.lastOK
		r.mu.Unlock()
		secs := 0.0
		if !t.IsZero() {
			secs = float64(t.UnixNano()) / 1e9
		}
		o.ObserveFloat64(last, secs)
		return nil
	}, ready, last)
	return err
}

// state says whether the service is ready, and if not, why.
func (r *readiness) state() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.lastOK.IsZero() && r.lastErr != nil:
		return false, "the port source has not answered yet: " + r.lastErr.Error()
	case r.lastOK.IsZero():
		return false, "the port source has not answered yet"
	case r.probe != nil && r.lastErr != nil && time.Since(r.lastOK) > r.cacheCover:
		return false, fmt.Sprintf("Neutron has failed for %s, longer than the cache can cover: %v", time.Since(r.lastOK).Round(time.Second), r.lastErr)
	}
	return true, ""
}

// watch probes the source until ctx is done (every second until the first success, then every 10s)
// and calls onChange each time readiness changes, starting with the first time it is ready.
func (r *readiness) watch(ctx context.Context, onChange func(ready bool, why string)) {
	interval := time.Second
	for {
		if r.probe != nil {
			if err := r.probe(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.markErr(err)
			} else {
				r.markOK(time.Now())
				interval = 10 * time.Second
			}
		}
		ok, why := r.state()
		r.mu.Lock()
		changed := ok != r.becameOK
		r.becameOK = ok
		r.mu.Unlock()
		if changed {
			onChange(ok, why)
		}
		if r.probe == nil && ok {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}
