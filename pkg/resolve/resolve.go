// Package resolve finds the instance behind a metadata request: given the Neutron network (or router)
// of the listener and the VM's source address, it returns the one port that owns that address and so
// the instance id (port device_id) and project id that get signed for nova.
//
// The Resolver interface is the boundary; Neutron (gophercloud) and a ports file implement it.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/metaproxy/metaproxy/pkg/cause"
)

// Kind says whether a Scope is a Neutron network or a Neutron router.
type Kind uint8

const (
	// KindNetwork is a listener in qdhcp-<network-id>.
	KindNetwork Kind = iota + 1
	// KindRouter is a listener in qrouter-<router-id>: the VM may be on any network of the router.
	KindRouter
)

// String returns "network" or "router".
func (k Kind) String() string {
	switch k {
	case KindNetwork:
		return "network"
	case KindRouter:
		return "router"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// Scope is where the request came in: a Neutron network or router, by id.
type Scope struct {
	Kind Kind
	ID   string
}

// String returns "network <id>" or "router <id>", as used in errors shown to VMs and operators.
func (s Scope) String() string { return s.Kind.String() + " " + s.ID }

// Query asks for the port that owns Addr in Scope. Addr is already unmapped (an IPv4-mapped IPv6
// address arrives as IPv4); an IPv6 link-local Addr is matched on the MAC address it encodes (EUI-64).
type Query struct {
	Scope Scope
	Addr  netip.Addr
}

// Instance is what a port says about the VM that owns it.
type Instance struct {
	// InstanceID is the port's device_id: nova's instance uuid.
	InstanceID string
	// ProjectID is the port's project_id (tenant_id on older Neutron).
	ProjectID string
	// PortID and NetworkID identify the port, for logs and traces.
	PortID    string
	NetworkID string
}

// Resolver finds the single port behind a Query.
//
// Errors: ErrNotFound when no port matches, an *AmbiguousError when several do, ErrUnavailable
// (wrapped) when the source of truth could not be asked. Implementations are safe for concurrent use.
type Resolver interface {
	Resolve(ctx context.Context, q Query) (Instance, error)
}

var (
	// ErrNotFound means no port on the scope owns the address.
	ErrNotFound = errors.New("no port owns the address")
	// ErrUnavailable means the source of truth (Neutron, the ports file) could not be read.
	ErrUnavailable = errors.New("port source unavailable")
)

// MayServeStale reports whether an answer past its TTL may stand in for one that failed with err
// (an ErrUnavailable error): only while the source is down or overloaded (cause.Cause.Outage:
// unreachable, timeout, 5xx, Keystone unreachable, every call slot busy), or when the source names
// no cause (a ports file being rewritten). Never while Neutron refuses the credentials or its
// policy forbids, or answers something unusable: it is up, and may meanwhile have given the
// address to a new VM of another project.
func MayServeStale(err error) bool {
	c, ok := cause.Of(err)
	return !ok || c.Outage()
}

// AmbiguousError is returned when more than one port owns the address: nothing may be signed then.
type AmbiguousError struct {
	PortIDs []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("%d ports own the address: %s", len(e.PortIDs), strings.Join(e.PortIDs, ", "))
}
