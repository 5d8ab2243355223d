package xdscmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// MetricNeutronFailures counts the polls of the Neutron source that failed, by cause.
const MetricNeutronFailures = "metaproxy_xds_neutron_failures_total"

// neutronSource is the Neutron source behind a client that authenticates with Keystone on first
// use: until Keystone issues a token, each poll fails with the reason (the last snapshots stay,
// cmd/xds starts and /readyz says why). Every failure names its cause (cause.Cause). It also
// refuses an empty view from credentials without the admin role: Neutron filters lists by policy
// without a word, so such a user sees no agents and no other project's subnets or routers, and
// cmd/xds would otherwise push nothing and call it a success.
type neutronSource struct {
	network *osclient.Network
	opts    source.NeutronOptions
	log     *slog.Logger

	failures  metric.Int64Counter // nil: not counted
	causeAttr map[cause.Cause]metric.AddOption

	mu      sync.Mutex
	src     *source.Neutron
	lastErr error
	warned  bool // the "not admin" warning was logged
}

var _ source.Source = (*neutronSource)(nil)

// Networks implements source.Source.
func (n *neutronSource) Networks(ctx context.Context) (source.Nodes, error) {
	nodes, err := n.networks(ctx)
	n.mu.Lock()
	n.lastErr = err
	n.mu.Unlock()
	if err != nil && n.failures != nil {
		if c, ok := cause.Of(err); ok {
			n.failures.Add(ctx, 1, n.causeAttr[c])
		}
	}
	return nodes, err
}

func (n *neutronSource) networks(ctx context.Context) (source.Nodes, error) {
	src, err := n.source(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := src.Networks(ctx)
	if err != nil {
		// source.Neutron's errors are "<what it listed>: <gophercloud's error>".
		what, _, _ := strings.Cut(err.Error(), ": ")
		return nil, fmt.Errorf("%s: %w", what, cause.Neutron(err, errors.Is(ctx.Err(), context.DeadlineExceeded)))
	}
	return nodes, n.checkView(nodes)
}

// source builds the Neutron source once the client has authenticated.
func (n *neutronSource) source(ctx context.Context) (*source.Neutron, error) {
	n.mu.Lock()
	src := n.src
	n.mu.Unlock()
	if src != nil {
		return src, nil
	}
	client, err := n.network.Client(ctx)
	if err != nil {
		return nil, err
	}
	src, err = source.NewNeutron(client, n.opts)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.src = src
	n.mu.Unlock()
	return src, nil
}

// checkView refuses an empty view from a token without the admin role, and warns once about a
// partial one. Under Neutron's default policies listing agents and their networks and routers is
// admin-only, and so is seeing other projects' subnets and routers (neutron/conf/policies:
// agent.py, subnet.py, router.py).
func (n *neutronSource) checkView(nodes source.Nodes) error {
	id := n.network.Identity()
	if id == nil || id.HasRole("admin") {
		return nil
	}
	networks := 0
	for _, nets := range nodes {
		networks += len(nets)
	}
	if networks == 0 {
		return &cause.Error{Cause: cause.Forbidden, Err: fmt.Errorf(
			"no network visible to cmd/xds's credentials (%s): under Neutron's default policies listing the agents with their networks and routers, "+
				"and every project's subnets and routers, needs the admin role (docs/migrate-from-neutron-metadata-agent.md, Credentials)", id)}
	}
	n.mu.Lock()
	warn := !n.warned
	n.warned = true
	n.mu.Unlock()
	if warn && n.log != nil {
		n.log.Warn("cmd/xds's Neutron credentials lack the admin role: Neutron may show only part of the cloud (docs/migrate-from-neutron-metadata-agent.md, Credentials)",
			"credentials", id.String(), "networks", networks)
	}
	return nil
}

// why says why the source has not answered: the last poll's error ("" when it succeeded).
func (n *neutronSource) why() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lastErr == nil {
		return ""
	}
	return n.lastErr.Error()
}

// instrument counts failures on mp (MetricNeutronFailures, every cause present from the start).
func (n *neutronSource) instrument(mp metric.MeterProvider) error {
	c, err := mp.Meter("github.com/metaproxy/metaproxy/pkg/xdscmd").Int64Counter("metaproxy.xds.neutron.failures",
		metric.WithDescription("Polls of the Neutron source that failed, by cause: unreachable, timeout, server_error, credentials, forbidden, keystone_unreachable, tls, bad_response (docs/observability.md)."))
	if err != nil {
		return err
	}
	n.causeAttr = map[cause.Cause]metric.AddOption{}
	for _, cs := range cause.All() {
		n.causeAttr[cs] = metric.WithAttributeSet(attribute.NewSet(attribute.String("cause", string(cs))))
		c.Add(context.Background(), 0, n.causeAttr[cs])
	}
	n.failures = c
	return nil
}
