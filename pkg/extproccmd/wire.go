package extproccmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"go.opentelemetry.io/otel/metric"

	"github.com/metaproxy/metaproxy/pkg/agentini"
	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
	"github.com/metaproxy/metaproxy/pkg/sign"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
)

// demoSecret signs in --demo mode when no secret is configured. It is public: never use it with nova.
const demoSecret = "metaproxy-demo-secret"

// wiring is the assembled service.
type wiring struct {
	decider    *decide.Decider
	signer     *sign.Signer
	ready      *readiness
	source     string // what resolves ports, for the start-up log line
	secretFrom string // where the secret came from (never the secret)
}

// wire builds the resolver, the signer and the decider from cfg. needSecret is false for the
// resolve subcommand, which can show what would be sent without the secret. tel is nil when
// nothing is observed (the resolve subcommand).
func wire(ctx context.Context, cfg Config, log *slog.Logger, needSecret bool, tel *telemetry.Telemetry) (*wiring, error) {
	var fromINI string
	if cfg.MetadataAgentINI != "" {
		s, err := agentini.Load(cfg.MetadataAgentINI)
		if err != nil {
			return nil, err
		}
		fromINI = s.SharedSecret
	}
	secret, secretFrom, err := loadSecret(cfg, fromINI)
	if err != nil {
		return nil, err
	}
	if len(secret) == 0 {
		switch {
		case cfg.Demo:
			secret, secretFrom = []byte(demoSecret), "the public demo secret (--demo)"
			log.Warn("demo mode: signing with the public demo secret; never point this at a real nova")
		case needSecret:
			return nil, fmt.Errorf("no shared secret: give --secret-file, $%s, or --metadata-agent-ini with metadata_proxy_shared_secret (the value nova has in [neutron] metadata_proxy_shared_secret)", SecretEnv)
		default:
			secret, secretFrom = []byte("unset"), "nowhere (no secret configured: the signature shown is not nova's)"
		}
	}
	signer, err := sign.New(secret)
	if err != nil {
		return nil, err
	}

	w := &wiring{signer: signer, secretFrom: secretFrom, ready: &readiness{staleWindow: cfg.Cache.TTL + cfg.Cache.StaleWindow}}
	var (
		r           resolve.Resolver
		sourceLabel string
	)
	switch {
	case cfg.Demo:
		pf, err := resolve.NewPortsData(demo.Ports())
		if err != nil {
			return nil, fmt.Errorf("embedded demo ports: %w", err)
		}
		r, w.source, sourceLabel = pf, "embedded demo ports", "demo"
		w.ready.markOK(time.Now())
	case cfg.PortsFile != "":
		pf, err := resolve.NewPortsFile(cfg.PortsFile, log)
		if err != nil {
			return nil, err
		}
		r, w.source, sourceLabel = pf, "ports file "+cfg.PortsFile, "ports_file"
		w.ready.markOK(time.Now())
	default:
		o := osclient.Options{Cloud: cfg.OSCloud, NeutronURL: cfg.NeutronURL}
		if tel != nil && tel.Tracing {
			// Every Neutron request becomes a client span, child of the cache lookup that needed it.
			o.WrapTransport = func(base http.RoundTripper) http.RoundTripper {
				return telemetry.HTTPTransport(base, tel.TracerProvider, tel.Propagator, "neutron")
			}
		}
		client, err := osclient.NewNetworkClient(ctx, o)
		if err != nil {
			if errors.Is(err, osclient.ErrNoCredentials) {
				return nil, fmt.Errorf("no port source: give --ports-file, --os-cloud, --neutron-url or --demo (%w)", err)
			}
			return nil, err
		}
		neutron := resolve.NewNeutron(client, resolve.NeutronOptions{Timeout: cfg.NeutronTimeout, RouterNetworksTTL: cfg.Cache.TTL})
		r, w.source, sourceLabel = readinessResolver{r: neutron, ready: w.ready}, "neutron at "+client.Endpoint, "neutron"
		w.ready.probe = func(ctx context.Context) error { return probeNeutron(ctx, client, cfg.NeutronTimeout) }
	}
	var opts []decide.Option
	if tel != nil {
		if tel.Tracing {
			opts = append(opts, decide.WithTracing(tel.TracerProvider, tel.Propagator))
		}
		opts = append(opts, decide.WithMetrics(tel.MeterProvider, sourceLabel))
		if err := w.ready.instrument(tel.MeterProvider); err != nil {
			return nil, fmt.Errorf("readiness metrics: %w", err)
		}
	}
	w.decider, err = decide.New(r, signer, answercache.Options{
		TTL: cfg.Cache.TTL, NegativeTTL: cfg.Cache.NegativeTTL, StaleWindow: staleOrOff(cfg.Cache.StaleWindow), Size: cfg.Cache.Size,
	}, log, opts...)
	if err != nil {
		return nil, err
	}
	return w, nil
}

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

// staleOrOff maps the configuration's 0 ("disabled") to answercache's negative ("disabled").
func staleOrOff(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
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
	probe       func(context.Context) error // nil: the source is local and always answers
	staleWindow time.Duration

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
	case r.probe != nil && r.lastErr != nil && time.Since(r.lastOK) > r.staleWindow:
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
