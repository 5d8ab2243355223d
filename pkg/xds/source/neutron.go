package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/routers"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/subnets"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"go.opentelemetry.io/otel/metric"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/neutronlist"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// NeutronMode says how the Neutron source maps networks to nodes.
type NeutronMode string

const (
	// ModeAgents follows Neutron's scheduling: every DHCP agent's networks (and, with Routers, every
	// L3 agent's routers) are served by the node named like the agent's host.
	ModeAgents NeutronMode = "agents"
	// ModeAll serves every network that has a DHCP-enabled subnet (and, with Routers, every router)
	// from one node: single-node clouds and labs.
	ModeAll NeutronMode = "all"
)

// NeutronOptions configure the Neutron source.
type NeutronOptions struct {
	// Mode is ModeAgents (default) or ModeAll.
	Mode NeutronMode
	// NodeID is the node that serves everything in ModeAll.
	NodeID string
	// Networks includes DHCP-served networks (listeners in qdhcp-<id>). Routers includes routers
	// (listeners in qrouter-<id>, Neutron's router-mode metadata proxy).
	Networks, Routers bool
	// NetnsDir is where the agents' namespaces live on the nodes (DefaultNetnsDir when empty).
	NetnsDir string
	// LocalNamespaces, in ModeAll, says the namespaces live on this host (xds runs on the one node
	// that serves everything): see keepLocal.
	LocalNamespaces bool
	// PageSize, when positive, asks Neutron for the agents and ports listings of agents mode in
	// pages of that many (the limit parameter); zero leaves it to Neutron (all at once unless its
	// pagination_max_limit is set). Pages are followed either way.
	PageSize int
	// MeterProvider receives the source's request metrics (NeutronMetricNames); nil: none.
	MeterProvider metric.MeterProvider
	// Log receives what the source notices about Neutron's answers; nil: nothing.
	Log *slog.Logger
}

// Neutron asks Neutron which networks and routers each node serves.
type Neutron struct {
	client  *gophercloud.ServiceClient
	opts    NeutronOptions
	gens    generations // of the local namespaces (LocalNamespaces)
	metrics *requestMetrics
	log     *slog.Logger

	mu        sync.Mutex // one poll at a time: agents mode carries what it learnt to the next poll
	scheduled scheduling
}

var _ Source = (*Neutron)(nil)

// NewNeutron returns a Source backed by the Neutron API behind client.
func NewNeutron(client *gophercloud.ServiceClient, opts NeutronOptions) (*Neutron, error) {
	if opts.Mode == "" {
		opts.Mode = ModeAgents
	}
	if opts.NetnsDir == "" {
		opts.NetnsDir = DefaultNetnsDir
	}
	switch {
	case client == nil:
		return nil, errors.New("neutron source: nil client")
	case opts.Mode != ModeAgents && opts.Mode != ModeAll:
		return nil, fmt.Errorf("neutron source: mode %q: want agents or all", opts.Mode)
	case opts.Mode == ModeAll && opts.NodeID == "":
		return nil, errors.New("neutron source: mode all needs a node id")
	case !opts.Networks && !opts.Routers:
		return nil, errors.New("neutron source: neither networks nor routers selected")
	case opts.PageSize < 0:
		return nil, fmt.Errorf("neutron source: page size %d: want 0 (Neutron's choice) or more", opts.PageSize)
	}
	m, err := newRequestMetrics(opts.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("neutron source metrics: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Neutron{client: client, opts: opts, metrics: m, log: log}, nil
}

// Networks implements Source.
func (n *Neutron) Networks(ctx context.Context) (Nodes, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	nodes := Nodes{}
	calls := requests{}
	var err error
	if n.opts.Mode == ModeAll {
		err = n.all(ctx, nodes, calls)
	} else {
		err = n.agents(ctx, nodes, calls)
	}
	n.metrics.record(ctx, calls)
	if err != nil {
		return nil, err
	}
	return Normalize(nodes), nil
}

func (n *Neutron) add(nodes Nodes, node string, kind resolve.Kind, id string) {
	if !contract.ValidID(id) {
		return
	}
	nodes[node] = append(nodes[node], Network{Kind: kind, ID: id, NamespacePath: NamespacePath(n.opts.NetnsDir, kind, id)})
}

// listPages fetches every page of p, a list of key, each one request to endpoint (a request that
// failed, which makes no page, too), and hands it to fn. A page without the list is an error
// (neutronlist): a proxy's page or an empty object must not read as "no networks", which would
// take every listener of the node away.
func listPages(ctx context.Context, p pagination.Pager, calls requests, endpoint, key string, fn func(neutronlist.Page) error) error {
	create := neutronlist.Creator(key)
	p = p.WithPageCreator(func(r pagination.PageResult) pagination.Page {
		calls[endpoint]++
		return create(r)
	})
	var fnErr error
	err := p.EachPage(ctx, func(_ context.Context, pg pagination.Page) (bool, error) {
		fnErr = fn(pg.(neutronlist.Page))
		return fnErr == nil, fnErr
	})
	if err != nil && fnErr == nil {
		calls[endpoint]++
	}
	return err
}

func (n *Neutron) all(ctx context.Context, nodes Nodes, calls requests) error {
	node := n.opts.NodeID
	nodes[node] = nil
	if n.opts.Networks {
		enabled := true
		err := listPages(ctx, subnets.List(n.client, subnets.ListOpts{EnableDHCP: &enabled}), calls, EndpointSubnets, "subnets",
			func(p neutronlist.Page) error {
				subs, err := subnets.ExtractSubnets(subnets.SubnetPage{LinkedPageBase: p.LinkedPageBase})
				if err != nil {
					return fmt.Errorf("decode subnets: %w", err)
				}
				for _, s := range subs {
					if s.EnableDHCP {
						n.add(nodes, node, resolve.KindNetwork, s.NetworkID)
					}
				}
				return nil
			})
		if err != nil {
			return fmt.Errorf("list DHCP-enabled subnets: %w", err)
		}
	}
	if n.opts.Routers {
		err := listPages(ctx, routers.List(n.client, routers.ListOpts{}), calls, EndpointRouters, "routers",
			func(p neutronlist.Page) error {
				rs, err := routers.ExtractRouters(routers.RouterPage{LinkedPageBase: p.LinkedPageBase})
				if err != nil {
					return fmt.Errorf("decode routers: %w", err)
				}
				for _, r := range rs {
					n.add(nodes, node, resolve.KindRouter, r.ID)
				}
				return nil
			})
		if err != nil {
			return fmt.Errorf("list routers: %w", err)
		}
	}
	if n.opts.LocalNamespaces {
		n.keepLocal(nodes, node)
	}
	return nil
}

// keepLocal applies what this host's namespaces say: a network whose namespace the DHCP (or L3)
// agent has not created yet is left out until it exists, since Envoy cannot bind a listener in a
// missing namespace, the interface holding fe80::a9fe:a9fe is read from it so that the IPv6
// listener can be bound, and a namespace recreated at the same path gets a new generation.
func (n *Neutron) keepLocal(nodes Nodes, node string) {
	kept := nodes[node][:0]
	for _, nw := range nodes[node] {
		nw, err := n.gens.local(nw)
		if err != nil {
			continue
		}
		kept = append(kept, nw)
	}
	n.gens.prune(kept)
	nodes[node] = kept
}
