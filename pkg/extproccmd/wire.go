package extproccmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/metaproxy/metaproxy/pkg/agentini"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/portcache"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
	"github.com/metaproxy/metaproxy/pkg/sign"
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
// resolve subcommand, which can show what would be sent without the secret.
func wire(ctx context.Context, cfg Config, log *slog.Logger, needSecret bool) (*wiring, error) {
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
	var r resolve.Resolver
	switch {
	case cfg.Demo:
		pf, err := resolve.NewPortsData(demo.Ports())
		if err != nil {
			return nil, fmt.Errorf("embedded demo ports: %w", err)
		}
		r, w.source = pf, "embedded demo ports"
		w.ready.markOK(time.Now())
	case cfg.PortsFile != "":
		pf, err := resolve.NewPortsFile(cfg.PortsFile, log)
		if err != nil {
			return nil, err
		}
		r, w.source = pf, "ports file "+cfg.PortsFile
		w.ready.markOK(time.Now())
	default:
		client, err := osclient.NewNetworkClient(ctx, osclient.Options{Cloud: cfg.OSCloud, NeutronURL: cfg.NeutronURL})
		if err != nil {
			if errors.Is(err, osclient.ErrNoCredentials) {
				return nil, fmt.Errorf("no port source: give --ports-file, --os-cloud, --neutron-url or --demo (%w)", err)
			}
			return nil, err
		}
		r, w.source = resolve.NewNeutron(client, resolve.NeutronOptions{Timeout: cfg.NeutronTimeout}), "neutron at "+client.Endpoint
		w.ready.probe = func(ctx context.Context) error { return probeNeutron(ctx, client, cfg.NeutronTimeout) }
	}
	w.decider, err = decide.New(r, signer, portcache.Options{
		TTL: cfg.Cache.TTL, NegativeTTL: cfg.Cache.NegativeTTL, StaleWindow: staleOrOff(cfg.Cache.StaleWindow), Size: cfg.Cache.Size,
	}, log)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// staleOrOff maps the configuration's 0 ("disabled") to portcache's negative ("disabled").
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
	becameOK bool
}

func (r *readiness) markOK(t time.Time) {
	r.mu.Lock()
	r.lastOK, r.lastErr = t, nil
	r.mu.Unlock()
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
// and calls onReady once, the first time the service is ready.
func (r *readiness) watch(ctx context.Context, onReady func()) {
	interval := time.Second
	for {
		if r.probe != nil {
			if err := r.probe(ctx); err != nil {
				r.mu.Lock()
				r.lastErr = err
				r.mu.Unlock()
			} else {
				r.markOK(time.Now())
				interval = 10 * time.Second
			}
		}
		if ok, _ := r.state(); ok {
			r.mu.Lock()
			first := !r.becameOK
			r.becameOK = true
			r.mu.Unlock()
			if first {
				onReady()
			}
		}
		if r.probe == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}
