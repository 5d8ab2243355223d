package load

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// Bounds of a simulated fleet: enough for the largest row (5000 nodes x 10 networks) and
// for 1000 nodes x 100 networks, small enough that one run cannot take the machine down.
const (
	maxFleetNodes     = 10000
	maxFleetNetworks  = 1000
	maxFleetListeners = 1_000_000
)

// Fleet is the set of Envoy nodes `loadgen xds` simulates and the networks file it gives cmd/xds:
// node i is "node-%05d" and serves Networks networks. AgentsPerNetwork consecutive nodes share the
// same networks, as a network is served by that many DHCP agents (neutron's
// dhcp_agents_per_network, 1 by default: every network on one node). The change adds one network to
// every node (one new network per group of nodes that share networks).
type Fleet struct {
	Nodes, Networks, AgentsPerNetwork int
	// IPv6 gives every network an interface, hence an IPv6 listener too (cmd/xds generates it only
	// when the interface holding fe80::a9fe:a9fe is known; with Neutron's agents mode it is not).
	IPv6 bool
}

// Validate reports every problem of f at once.
func (f Fleet) Validate() error {
	var errs []error
	if f.Nodes < 1 || f.Nodes > maxFleetNodes {
		errs = append(errs, fmt.Errorf("nodes %d: want 1 to %d", f.Nodes, maxFleetNodes))
	}
	if f.Networks < 0 || f.Networks > maxFleetNetworks {
		errs = append(errs, fmt.Errorf("networks %d: want 0 to %d per node", f.Networks, maxFleetNetworks))
	}
	if f.AgentsPerNetwork < 1 || f.AgentsPerNetwork > max(f.Nodes, 1) {
		errs = append(errs, fmt.Errorf("agents per network %d: want 1 to the number of nodes (%d)", f.AgentsPerNetwork, f.Nodes))
	}
	if l := f.Nodes * (f.Networks + 1) * f.ListenersPerNetwork(); l > maxFleetListeners {
		errs = append(errs, fmt.Errorf("%d listeners in all (nodes x (networks + 1) x IP versions): at most %d", l, maxFleetListeners))
	}
	return errors.Join(errs...)
}

// ListenersPerNetwork is 2 with IPv6, else 1.
func (f Fleet) ListenersPerNetwork() int {
	if f.IPv6 {
		return 2
	}
	return 1
}

// NodeID is the node id of node i.
func (f Fleet) NodeID(i int) string { return fmt.Sprintf("node-%05d", i) }

// NetworkIDs returns the networks of node i before the change, or after it (one more).
func (f Fleet) NetworkIDs(i int, changed bool) []string {
	group := i / f.AgentsPerNetwork
	first := group * (f.Networks + 1) // each group owns Networks+1 ids: the last one is the change's
	n := f.Networks
	if changed {
		n++
	}
	ids := make([]string, n)
	for j := range ids {
		ids[j] = GenNetworkID(first + j)
	}
	return ids
}

// interfaceName is the interface given to network id with IPv6 (the DHCP port's tap device name).
func interfaceName(id string) string { return "tap" + id[:11] }

// ExpectedListeners maps the name of every listener node i must have (before or after the change)
// to the namespace path it must be bound in, as cmd/xds names and binds them (pkg/xds/translate,
// default --netns-dir).
func (f Fleet) ExpectedListeners(i int, changed bool) map[string]string {
	out := map[string]string{}
	for _, id := range f.NetworkIDs(i, changed) {
		ns := source.NamespacePath(source.DefaultNetnsDir, resolve.KindNetwork, id)
		out[translate.ListenerName(resolve.KindNetwork, id, 4)] = ns
		if f.IPv6 {
			out[translate.ListenerName(resolve.KindNetwork, id, 6)] = ns
		}
	}
	return out
}

// WriteNetworksFile writes the cmd/xds networks file of the fleet (JSON, which cmd/xds reads as
// YAML), before or after the change.
func (f Fleet) WriteNetworksFile(w io.Writer, changed bool) error {
	type entry struct {
		ID        string `json:"id"`
		Interface string `json:"interface,omitempty"`
	}
	nodes := make(map[string][]entry, f.Nodes)
	for i := range f.Nodes {
		ids := f.NetworkIDs(i, changed)
		list := make([]entry, len(ids))
		for j, id := range ids {
			list[j] = entry{ID: id}
			if f.IPv6 {
				list[j].Interface = interfaceName(id)
			}
		}
		nodes[f.NodeID(i)] = list
	}
	return json.NewEncoder(w).Encode(map[string]any{"nodes": nodes})
}
