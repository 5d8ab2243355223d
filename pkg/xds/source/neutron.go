package source

import (
	"context"
	"errors"
	"fmt"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/agents"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/routers"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/subnets"

	"github.com/metaproxy/metaproxy/pkg/contract"
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

// Neutron agent types as Neutron reports them in agent_type.
const (
	agentTypeDHCP = "DHCP agent"
	agentTypeL3   = "L3 agent"
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
}

// Neutron asks Neutron which networks and routers each node serves.
type Neutron struct {
	client *gophercloud.ServiceClient
	opts   NeutronOptions
	gens   generations // of the local namespaces (LocalNamespaces)
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
	}
	return &Neutron{client: client, opts: opts}, nil
}

// Networks implements Source.
func (n *Neutron) Networks(ctx context.Context) (Nodes, error) {
	nodes := Nodes{}
	var err error
	if n.opts.Mode == ModeAll {
		err = n.all(ctx, nodes)
	} else {
		err = n.agents(ctx, nodes)
	}
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

func (n *Neutron) agents(ctx context.Context, nodes Nodes) error {
	if n.opts.Networks {
		dhcp, err := n.listAgents(ctx, agentTypeDHCP)
		if err != nil {
			return err
		}
		for _, a := range dhcp {
			nets, err := agents.ListDHCPNetworks(ctx, n.client, a.ID).Extract()
			if err != nil {
				return fmt.Errorf("list networks of DHCP agent %s on %s: %w", a.ID, a.Host, err)
			}
			if _, ok := nodes[a.Host]; !ok {
				nodes[a.Host] = nil
			}
			for _, net := range nets {
				n.add(nodes, a.Host, resolve.KindNetwork, net.ID)
			}
		}
	}
	if n.opts.Routers {
		l3, err := n.listAgents(ctx, agentTypeL3)
		if err != nil {
			return err
		}
		for _, a := range l3 {
			rs, err := agents.ListL3Routers(ctx, n.client, a.ID).Extract()
			if err != nil {
				return fmt.Errorf("list routers of L3 agent %s on %s: %w", a.ID, a.Host, err)
			}
			if _, ok := nodes[a.Host]; !ok {
				nodes[a.Host] = nil
			}
			for _, r := range rs {
				n.add(nodes, a.Host, resolve.KindRouter, r.ID)
			}
		}
	}
	return nil
}

func (n *Neutron) listAgents(ctx context.Context, agentType string) ([]agents.Agent, error) {
	pages, err := agents.List(n.client, agents.ListOpts{AgentType: agentType}).AllPages(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %ss: %w", agentType, err)
	}
	all, err := agents.ExtractAgents(pages)
	if err != nil {
		return nil, fmt.Errorf("decode %ss: %w", agentType, err)
	}
	return all, nil
}

func (n *Neutron) all(ctx context.Context, nodes Nodes) error {
	node := n.opts.NodeID
	nodes[node] = nil
	if n.opts.Networks {
		enabled := true
		pages, err := subnets.List(n.client, subnets.ListOpts{EnableDHCP: &enabled}).AllPages(ctx)
		if err != nil {
			return fmt.Errorf("list DHCP-enabled subnets: %w", err)
		}
		subs, err := subnets.ExtractSubnets(pages)
		if err != nil {
			return fmt.Errorf("decode subnets: %w", err)
		}
		for _, s := range subs {
			if s.EnableDHCP {
				n.add(nodes, node, resolve.KindNetwork, s.NetworkID)
			}
		}
	}
	if n.opts.Routers {
		pages, err := routers.List(n.client, routers.ListOpts{}).AllPages(ctx)
		if err != nil {
			return fmt.Errorf("list routers: %w", err)
		}
		rs, err := routers.ExtractRouters(pages)
		if err != nil {
			return fmt.Errorf("decode routers: %w", err)
		}
		for _, r := range rs {
			n.add(nodes, node, resolve.KindRouter, r.ID)
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
