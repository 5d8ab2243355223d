// Package source discovers which Neutron networks and routers each Envoy node serves metadata for.
//
// A Source answers one question, "which networks does each node serve right now?", from Neutron's
// agent scheduling (Neutron), from the qdhcp-/qrouter- namespaces present on this host (Namespaces)
// or from a static file (File). The result is the input of package translate.
package source

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// DefaultNetnsDir is where `ip netns` and Neutron's agents keep named network namespaces.
const DefaultNetnsDir = "/var/run/netns"

// Network is one metadata scope a node serves: a Neutron network (listener in qdhcp-<id>) or a
// Neutron router (listener in qrouter-<id>).
type Network struct {
	// Kind is resolve.KindNetwork or resolve.KindRouter.
	Kind resolve.Kind
	// ID is the Neutron network or router id.
	ID string
	// NamespacePath is the file that names the network namespace the listeners are bound in.
	NamespacePath string
	// Interface is the interface inside the namespace that carries fe80::a9fe:a9fe (the DHCP port's
	// tap device). A link-local address can only be bound on a given interface, so the IPv6 listener
	// is generated only when Interface is known. Empty means IPv4 only.
	Interface string
	// NamespaceGeneration counts how often the namespace at NamespacePath was replaced by another
	// one (deleted and created again at the same path: a new inode) while this source watched it.
	// Only sources that see the namespaces (netns, and neutron mode all on the node) know it; it is
	// 0 elsewhere. Package translate changes the listener with it so that Envoy binds a new socket
	// instead of keeping the one bound in the dead namespace.
	NamespaceGeneration uint32
}

// Nodes maps an Envoy node id (its bootstrap node.id, the host name by default) to the networks
// that node serves.
type Nodes map[string][]Network

// Source reports the networks of every node. Implementations are safe for concurrent use; an error
// means "no answer this time" and the caller keeps what it had.
type Source interface {
	Networks(ctx context.Context) (Nodes, error)
}

// NamespaceName returns the namespace Neutron creates for a scope: qdhcp-<id> or qrouter-<id>.
func NamespaceName(kind resolve.Kind, id string) string {
	if kind == resolve.KindRouter {
		return "qrouter-" + id
	}
	return "qdhcp-" + id
}

// NamespacePath returns dir/qdhcp-<id> or dir/qrouter-<id>.
func NamespacePath(dir string, kind resolve.Kind, id string) string {
	return filepath.Join(dir, NamespaceName(kind, id))
}

// ParseKind turns "network" (or "") and "router" into a resolve.Kind.
func ParseKind(s string) (resolve.Kind, error) {
	switch s {
	case "", "network":
		return resolve.KindNetwork, nil
	case "router":
		return resolve.KindRouter, nil
	default:
		return 0, fmt.Errorf("kind %q: want network or router", s)
	}
}

var ifacePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)

// ValidInterface reports whether name can be a Linux interface name (at most 15 bytes, no '/',
// no white space).
func ValidInterface(name string) bool { return ifacePattern.MatchString(name) }

// Normalize returns nodes with every node's networks sorted by kind then id and duplicates (same
// kind and id) dropped, the first occurrence winning. Nodes without networks are kept: they still
// get a snapshot.
func Normalize(nodes Nodes) Nodes {
	out := make(Nodes, len(nodes))
	for node, nets := range nodes {
		sorted := slices.Clone(nets) // the source's own slice stays as it is
		if sorted == nil {
			sorted = []Network{}
		}
		slices.SortStableFunc(sorted, CompareNetworks)
		out[node] = slices.CompactFunc(sorted, func(a, b Network) bool { return CompareNetworks(a, b) == 0 })
	}
	return out
}

// CompareNetworks orders networks as Normalize sorts them: by kind, then id.
func CompareNetworks(a, b Network) int {
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}
