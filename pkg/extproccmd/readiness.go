package extproccmd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// readinessResolver tells readiness how real lookups fare: an answer from Neutron (even "no such
// port") proves it works, an unavailable error counts as a failure, like a failed probe. While the
// probe finds that the credentials cannot see other projects' ports, "no such port" cannot be
// trusted: it becomes that failure (503 with the reason), never a 404 the cache keeps.
type readinessResolver struct {
	r     resolve.Resolver
	ready *readiness
}

var _ resolve.Resolver = readinessResolver{}

// Resolve implements resolve.Resolver.
func (rr readinessResolver) Resolve(ctx context.Context, q resolve.Query) (resolve.Instance, error) {
	inst, err := rr.r.Resolve(ctx, q)
	var ambiguous *resolve.AmbiguousError
	blind := rr.ready.blindness()
	switch {
	case errors.Is(err, resolve.ErrNotFound) && blind != nil:
		// Not ErrNotFound any more: no 404, and nothing the cache keeps as an answer.
		err = fmt.Errorf("resolve %s on %s: no port found, which proves nothing: %w: %w", q.Addr, q.Scope, resolve.ErrUnavailable, blind)
		rr.ready.markErr(err)
	case err == nil, errors.Is(err, resolve.ErrNotFound), errors.As(err, &ambiguous):
		rr.ready.markOK(time.Now())
	case errors.Is(err, resolve.ErrUnavailable) && ctx.Err() == nil:
		rr.ready.markErr(err)
	}
	return inst, err
}

// probeNeutron asks Neutron for a page of ports (their project only): cheap, and it proves
// reachability and credentials. blind is non-nil when the credentials see no other project's port
// and carry none of the roles that would (see visibility).
func probeNeutron(ctx context.Context, network *osclient.Network, timeout time.Duration) (blind, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := network.Client(ctx)
	if err != nil {
		return nil, fmt.Errorf("probe Neutron: %w", err)
	}
	var page struct {
		Ports []struct {
			ProjectID string `json:"project_id"`
			TenantID  string `json:"tenant_id"`
		} `json:"ports"`
	}
	_, err = c.Get(ctx, c.ServiceURL("ports")+"?limit=100&fields=id&fields=project_id&fields=tenant_id", &page, &gophercloud.RequestOpts{OkCodes: []int{200}})
	if err != nil {
		return nil, fmt.Errorf("probe Neutron at %s: %w", c.Endpoint, cause.Neutron(err, ctx.Err() != nil))
	}
	projects := make([]string, 0, len(page.Ports))
	for _, p := range page.Ports {
		projects = append(projects, cmp.Or(p.ProjectID, p.TenantID))
	}
	return visibility(network.Identity(), projects), nil
}

// visibility says why id cannot be trusted to see the ports of every project, or nil. Neutron
// hides ports it may not show (a list is filtered by policy, silently), so a project-scoped user
// without a cross-project role finds no port of other projects' VMs, and they would get 404. Seeing
// a port of another project proves the contrary; with only its own project's ports in view (or
// none), the token's roles decide: admin (always admitted by Neutron's default get_port policy,
// neutron/conf/policies/port.py) or advsvc (admitted from Zed to 2023.2; from 2024.1 the service
// role is, instead). Nothing in the API says which release answers, so the service role is not
// taken on trust: an empty cloud seen with it alone is reported until a VM of another project has
// a port (and advsvc alone on 2024.1 or later passes this fallback, though the probe of any cloud
// with VMs in other projects tells). nil id: a noauth Neutron, where every request is an admin's.
func visibility(id *osclient.Identity, projects []string) error {
	if id == nil {
		return nil
	}
	for _, p := range projects {
		if p != "" && p != id.ProjectID {
			return nil
		}
	}
	if id.HasRole("admin", "advsvc") {
		return nil
	}
	return &cause.Error{Cause: cause.Forbidden, Err: fmt.Errorf(
		"the Neutron credentials (%s) see no port of another project: Neutron hides the ports of other projects from them, and those VMs would get 404. "+
			"Under Neutron's default policies give the user the advsvc role (Neutron Zed to 2023.2; the service role from 2024.1) or admin, on its project "+
			"(docs/migrate-from-neutron-metadata-agent.md, Credentials)", id)}
}

// readiness tracks whether the service can identify VMs: the port source answered at least once,
// does not refuse (credentials, policy, certificate), and, for Neutron, has not failed for longer
// than the cache can cover (TTL + stale window). It logs each distinct failure once (and the
// recovery), and counts every failure by cause.
type readiness struct {
	// probe is nil when the source is local and always answers.
	probe func(context.Context) (blind, err error)
	// cacheCover is how long after the source's last answer cached answers can still stand in for
	// it: the cache's TTL plus its stale window.
	cacheCover time.Duration
	log        *slog.Logger // nil: no log lines

	mu       sync.Mutex
	lastOK   time.Time
	lastErr  error
	blind    error  // the probe's visibility verdict
	logged   string // the failure last logged: the next distinct one is logged
	failing  int    // failures since the last success
	becameOK bool   // readiness as last reported by watch

	failures  metric.Int64Counter // nil until instrumented
	causeAttr map[cause.Cause]metric.AddOption
}

func (r *readiness) markOK(t time.Time) {
	r.mu.Lock()
	if t.After(r.lastOK) {
		r.lastOK = t
	}
	failing := r.failing
	r.lastErr, r.logged, r.failing = nil, "", 0
	r.mu.Unlock()
	if failing > 0 && r.log != nil {
		r.log.Info("Neutron answers again", "failures", failing)
	}
}

// markErr records a failed lookup or probe: counted by cause, logged when it differs from the
// failure logged last (the cause and what failed, not which VM asked).
func (r *readiness) markErr(err error) {
	c, _ := cause.Of(err)
	what := err.Error()
	var oe *cause.Error
	if errors.As(err, &oe) {
		what = oe.Error()
	}
	r.mu.Lock()
	r.lastErr = err
	r.failing++
	distinct := string(c) + " " + what
	logIt := distinct != r.logged
	r.logged = distinct
	counter, attr := r.failures, r.causeAttr[c]
	r.mu.Unlock()
	if counter != nil && attr != nil {
		counter.Add(context.Background(), 1, attr)
	}
	if logIt && r.log != nil {
		r.log.Warn("Neutron lookups fail", "cause", string(c), "error", what, "example", err.Error())
	}
}

// setBlind records the probe's visibility verdict.
func (r *readiness) setBlind(blind error) {
	r.mu.Lock()
	r.blind = blind
	r.mu.Unlock()
}

func (r *readiness) blindness() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blind
}

// Readiness metrics.
const (
	MetricReady                = "metaproxy_extproc_ready"
	MetricPortSourceLastUpSecs = "metaproxy_extproc_port_source_last_success_timestamp_seconds"
	MetricNeutronFailures      = "metaproxy_extproc_neutron_failures_total"
)

// instrument reports readiness on mp: MetricReady (1 ready, 0 not), MetricPortSourceLastUpSecs
// and MetricNeutronFailures (by cause, every cause present from the start).
func (r *readiness) instrument(mp metric.MeterProvider) error {
	meter := mp.Meter("github.com/metaproxy/metaproxy/pkg/extproccmd")
	ready, err1 := meter.Int64ObservableGauge("metaproxy.extproc.ready",
		metric.WithDescription("1 when cmd/extproc is ready (/readyz answers 200), else 0."))
	last, err2 := meter.Float64ObservableGauge("metaproxy.extproc.port_source.last_success_timestamp", metric.WithUnit("s"),
		metric.WithDescription("Unix time of the port source's last successful answer (probe or lookup); 0 before the first."))
	failures, err3 := meter.Int64Counter("metaproxy.extproc.neutron.failures",
		metric.WithDescription("Failed Neutron lookups and probes, by cause: unreachable, timeout, server_error, credentials, forbidden, keystone_unreachable, tls, bad_response, saturated (docs/observability.md)."))
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	attrs := map[cause.Cause]metric.AddOption{}
	for _, c := range cause.All() {
		attrs[c] = metric.WithAttributeSet(attribute.NewSet(attribute.String("cause", string(c))))
		failures.Add(context.Background(), 0, attrs[c])
	}
	r.mu.Lock()
	r.failures, r.causeAttr = failures, attrs
	r.mu.Unlock()
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
	c, _ := cause.Of(r.lastErr)
	switch {
	case r.blind != nil:
		return false, r.blind.Error()
	case r.lastOK.IsZero() && r.lastErr != nil:
		return false, "the port source has not answered yet: " + r.lastErr.Error()
	case r.lastOK.IsZero():
		return false, "the port source has not answered yet"
	case r.lastErr != nil && c != "" && !c.Outage():
		// Up, but refusing or unusable: no cache can cover for that.
		return false, fmt.Sprintf("Neutron lookups fail (%s): %v", c, r.lastErr)
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
			answered, err := r.check(ctx)
			if err != nil && ctx.Err() != nil {
				return
			}
			if answered {
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

// check runs the probe once and records what it found. answered says whether the source answered
// (blind or not); err is the probe's failure.
func (r *readiness) check(ctx context.Context) (answered bool, err error) {
	blind, err := r.probe(ctx)
	switch {
	case err != nil && ctx.Err() != nil:
		return false, err
	case err != nil:
		r.markErr(err)
		return false, err
	}
	// Neutron answered; a blind view is a failure that no lookup can clear.
	r.setBlind(blind)
	if blind != nil {
		r.markErr(blind)
	} else {
		r.markOK(time.Now())
	}
	return true, nil
}
