package extproccmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/metaproxy/metaproxy/pkg/agentini"
	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
	"github.com/metaproxy/metaproxy/pkg/sign"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/version"
)

// demoSecret signs in --demo mode when no secret is configured. It is public: never use it with nova.
const demoSecret = "metaproxy-demo-secret"

// service is cmd/extproc's parts, assembled from the configuration by assemble.
type service struct {
	decider    *decide.Decider
	signer     *sign.Signer
	ready      *readiness
	source     string // what resolves ports, for the start-up log line
	secretFrom string // where the secret came from (never the secret)
}

// assemble builds the resolver, the signer and the decider from cfg, contacting nothing (Keystone
// is asked by the first lookup or probe). needSecret is false for the resolve subcommand, which can
// show what would be sent without the secret. tel is nil when nothing is observed (the resolve
// subcommand).
func assemble(cfg Config, log *slog.Logger, needSecret bool, tel *telemetry.Telemetry) (*service, error) {
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

	w := &service{signer: signer, secretFrom: secretFrom, ready: &readiness{cacheCover: cfg.Cache.TTL + cfg.Cache.StaleWindow, log: log}}
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
		o := osclient.Options{Cloud: cfg.OSCloud, NeutronURL: cfg.NeutronURL, Timeout: cfg.NeutronTimeout,
			MaxIdleConnsPerHost: cfg.NeutronMaxConcurrent, UserAgent: "metaproxy-extproc/" + version.String()}
		if tel != nil && tel.Tracing {
			// Every Neutron request becomes a client span, child of the cache lookup that needed it.
			o.WrapTransport = func(base http.RoundTripper) http.RoundTripper {
				return telemetry.HTTPTransport(base, tel.TracerProvider, tel.Propagator, "neutron")
			}
		}
		// Keystone is asked on first use: with Keystone down or the credentials refused, the
		// service starts and /readyz says why.
		network, err := osclient.New(o)
		if err != nil {
			if errors.Is(err, osclient.ErrNoCredentials) {
				return nil, fmt.Errorf("no port source: give --ports-file, --os-cloud, --neutron-url or --demo (%w)", err)
			}
			return nil, err
		}
		neutron := resolve.NewNeutron(network, resolve.NeutronOptions{Timeout: cfg.NeutronTimeout, MaxConcurrent: cfg.NeutronMaxConcurrent, RouterNetworksTTL: cfg.Cache.TTL})
		r, w.source, sourceLabel = readinessResolver{r: neutron, ready: w.ready}, "neutron with "+network.Source(), "neutron"
		w.ready.probe = func(ctx context.Context) (error, error) { return probeNeutron(ctx, network, cfg.NeutronTimeout) }
	}
	var opts []decide.Option
	if tel != nil {
		if tel.Tracing {
			opts = append(opts, decide.WithTracing(tel.TracerProvider))
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

// staleOrOff maps the configuration's 0 ("disabled") to answercache's negative ("disabled").
func staleOrOff(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
