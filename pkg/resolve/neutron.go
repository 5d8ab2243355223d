package resolve

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/neutronlist"
)

// DefaultNeutronTimeout bounds one Resolve call against Neutron when NeutronOptions.Timeout is zero.
const DefaultNeutronTimeout = 3 * time.Second

// DefaultNeutronMaxConcurrent is the cap on concurrent Neutron lookups when
// NeutronOptions.MaxConcurrent is zero (osclient.DefaultMaxIdleConnsPerHost is the same: as many
// idle connections as calls).
const DefaultNeutronMaxConcurrent = 32

// NeutronClient hands out the client for each lookup, authenticating with Keystone first when it
// has to (osclient.Network does). Its errors are *cause.Error.
type NeutronClient interface {
	Client(ctx context.Context) (*gophercloud.ServiceClient, error)
}

// FixedClient is a NeutronClient that is always the same ready client (a noauth Neutron, a test).
type FixedClient struct{ C *gophercloud.ServiceClient }

// Client implements NeutronClient.
func (f FixedClient) Client(context.Context) (*gophercloud.ServiceClient, error) { return f.C, nil }

// routerInterfaceOwners are the device_owner values of a router's interface ports, the ones
// neutron-metadata-agent lists to find a router's networks (neutron_lib.constants.
// ROUTER_INTERFACE_OWNERS: legacy, HA and DVR routers). The gateway and SNAT ports are not among
// them: VMs are not on those networks.
func routerInterfaceOwners() []string {
	return []string{
		"network:router_interface",
		"network:ha_router_replicated_interface",
		"network:router_interface_distributed",
	}
}

// instancePortFields are the only port attributes Neutron is asked for when looking up the port of
// a VM: enough to sign the request and to check the answer.
func instancePortFields() []string {
	return []string{"id", "device_id", "project_id", "tenant_id", "network_id"}
}

// NeutronOptions tunes a Neutron resolver.
type NeutronOptions struct {
	// Timeout bounds one Resolve call: the wait for a call slot (MaxConcurrent), a token if one
	// is needed, and all of its Neutron requests together (router mode may make two). Zero means
	// DefaultNeutronTimeout. There are no retries: the cache in front of the resolver coalesces
	// lookups, remembers failures and serves stale answers while Neutron is down.
	Timeout time.Duration
	// MaxConcurrent caps the Resolve calls that talk to Neutron at once, across all VMs: when
	// Neutron is slow, a storm of lookups waits (within Timeout) instead of piling onto it.
	// Zero means DefaultNeutronMaxConcurrent.
	MaxConcurrent int
	// RouterNetworksTTL is how long the networks of a router's interface ports are reused in
	// router mode. Zero means DefaultRouterNetworksTTL.
	RouterNetworksTTL time.Duration
}

// Neutron resolves ports by asking Neutron's API (GET /v2.0/ports), the way neutron-metadata-agent
// does:
//
//   - network mode: ports with network_id=<network> and fixed_ips=ip_address=<addr>;
//   - router mode: first the router's interface ports (device_id=<router>, device_owner in the
//     router-interface owners) for their networks, then ports on any of those networks (repeated
//     network_id parameters) with the address. The router's networks are reused for
//     RouterNetworksTTL, so a VM costs one lookup as in network mode; when no port is found with a
//     list older than a second, the router's networks are listed again first;
//   - an EUI-64 link-local IPv6 source is matched with mac_address=<mac> instead of fixed_ips.
//
// The credentials behind the client must see the ports of every project (admin, or advsvc on
// Neutron Zed to 2023.2, service from 2024.1): with a project-scoped user, other projects' ports
// are silently missing and their VMs get ErrNotFound (cmd/extproc's probe detects it).
//
// Errors: ErrNotFound (wrapped) when no port matches or the single match has no device_id (a port
// that is not bound to an instance, which nova would reject anyway); *AmbiguousError (wrapped)
// when several ports match; ErrUnavailable (wrapped) when no answer could be had, together with a
// *cause.Error that names the cause (cause.Of): Neutron or Keystone unreachable or slow, Neutron
// failing (5xx), credentials refused (401), a policy that forbids (403), an untrusted certificate,
// an unusable answer, or every call slot busy. When the caller's ctx ends first the
// error wraps both ErrUnavailable and the context's error (and no cause: nothing failed).
type Neutron struct {
	clients NeutronClient
	timeout time.Duration
	slots   chan struct{} // one token per Neutron call in flight
	routers *routerNets
}

var _ Resolver = (*Neutron)(nil)

// NewNeutron returns a resolver that looks ports up through the network (v2.0) service clients
// that clients hands out.
func NewNeutron(clients NeutronClient, opts NeutronOptions) *Neutron {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultNeutronTimeout
	}
	slots := opts.MaxConcurrent
	if slots <= 0 {
		slots = DefaultNeutronMaxConcurrent
	}
	return &Neutron{clients: clients, timeout: timeout, slots: make(chan struct{}, slots),
		routers: newRouterNets(opts.RouterNetworksTTL, time.Now)}
}

// Resolve finds the one port in q.Scope that owns q.Addr.
func (n *Neutron) Resolve(ctx context.Context, q Query) (Instance, error) {
	t, err := checkQuery(q)
	if err != nil {
		return Instance{}, err
	}
	callCtx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	what := fmt.Sprintf("resolve %s on %s", t, q.Scope)
	select {
	case n.slots <- struct{}{}:
		defer func() { <-n.slots }()
	case <-callCtx.Done():
		// A deadline (the caller's or Timeout) passed while every slot was busy.
		if errors.Is(ctx.Err(), context.Canceled) {
			return Instance{}, n.unavailable(ctx, callCtx, what, ctx.Err())
		}
		return Instance{}, fmt.Errorf("%s: %w: %w", what, ErrUnavailable, &cause.Error{Cause: cause.Saturated,
			Err: fmt.Errorf("all %d Neutron call slots stayed busy until the deadline: Neutron answers slowly (raise the cap only if Neutron can take more)", cap(n.slots))})
	}
	client, err := n.clients.Client(callCtx)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = &cause.Error{Cause: cause.KeystoneUnreachable, Err: fmt.Errorf("no token from Keystone within %s: %w", n.timeout, err)}
		}
		return Instance{}, n.unavailable(ctx, callCtx, what+": get a token", err)
	}
	list := func(ctx context.Context, router string) ([]string, error) {
		return n.routerNetworks(ctx, client, router)
	}

	if q.Scope.Kind == KindNetwork {
		return n.resolveOn(ctx, callCtx, client, q, t, []string{q.Scope.ID})
	}
	networks, listed, err := n.routers.get(callCtx, q.Scope.ID, 0, list)
	if err != nil {
		return Instance{}, n.unavailable(ctx, callCtx, what+": list the router's interface ports", err)
	}
	inst, err := n.resolveOn(ctx, callCtx, client, q, t, networks)
	if listed || !errors.Is(err, ErrNotFound) {
		return inst, err
	}
	// Not found with a reused list: the VM's network may have been attached since.
	again, relisted, lerr := n.routers.get(callCtx, q.Scope.ID, routerNetworksRecheck, list)
	if lerr != nil || !relisted || slices.Equal(again, networks) {
		return inst, err
	}
	return n.resolveOn(ctx, callCtx, client, q, t, again)
}

// resolveOn finds the one port on networks (sorted, distinct) that owns t.
func (n *Neutron) resolveOn(ctx, callCtx context.Context, client *gophercloud.ServiceClient, q Query, t target, networks []string) (Instance, error) {
	if len(networks) == 0 {
		// neutron-metadata-agent would then search every network for the address; a router
		// without interfaces has no VMs behind it, so nothing may be signed.
		return Instance{}, fmt.Errorf("resolve %s on %s: the router has no interface ports: %w", t, q.Scope, ErrNotFound)
	}
	pq := portQuery{networkIDs: networks, fields: instancePortFields()}
	if t.mac != "" {
		pq.macAddress = t.mac
	} else {
		pq.ipAddress = t.addr.String()
	}
	var cands []candidate
	err := list(callCtx, client, pq, func(p ports.Port) {
		cands = append(cands, candidate{
			id: p.ID, deviceID: p.DeviceID, projectID: p.ProjectID, tenantID: p.TenantID, networkID: p.NetworkID,
		})
	})
	if err != nil {
		return Instance{}, n.unavailable(ctx, callCtx, fmt.Sprintf("resolve %s on %s: list ports", t, q.Scope), err)
	}
	// Neutron applied the network_id filter; a port outside the asked networks would mean it did
	// not, and such a port must never be signed for this listener.
	for _, c := range cands {
		if !slices.Contains(networks, c.networkID) {
			return Instance{}, fmt.Errorf("resolve %s on %s: %w: %w", t, q.Scope, ErrUnavailable, &cause.Error{Cause: cause.BadResponse,
				Err: fmt.Errorf("Neutron returned port %s of network %q, which was not asked for", c.id, c.networkID)})
		}
	}
	return pick(q.Scope, t, cands)
}

// routerNetworks returns the sorted, distinct networks of the router's interface ports.
func (n *Neutron) routerNetworks(ctx context.Context, client *gophercloud.ServiceClient, routerID string) ([]string, error) {
	var nets []string
	err := list(ctx, client, portQuery{
		deviceID:     routerID,
		deviceOwners: routerInterfaceOwners(),
		fields:       []string{"network_id"},
	}, func(p ports.Port) {
		if p.NetworkID != "" {
			nets = append(nets, p.NetworkID)
		}
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(nets)
	return slices.Compact(nets), nil
}

// list walks every page of GET /v2.0/ports?<q> and calls each for every port.
func list(ctx context.Context, client *gophercloud.ServiceClient, q portQuery, each func(ports.Port)) error {
	pager := ports.List(client, q).WithPageCreator(neutronlist.Creator("ports"))
	return pager.EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		ps, err := ports.ExtractPorts(ports.PortPage{LinkedPageBase: page.(neutronlist.Page).LinkedPageBase})
		if err != nil {
			return false, err
		}
		for _, p := range ps {
			each(p)
		}
		return true, nil
	})
}

// unavailable turns a failed call into an ErrUnavailable error that names the cause
// (*cause.Error) and says what to check, or says that the caller gave up.
func (n *Neutron) unavailable(ctx, callCtx context.Context, what string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s: the caller gave up: %w: %w", what, ErrUnavailable, ctxErr)
	}
	if _, ok := cause.Of(err); !ok && errors.Is(callCtx.Err(), context.DeadlineExceeded) {
		err = &cause.Error{Cause: cause.Timeout, Err: fmt.Errorf("Neutron did not answer within %s: %w", n.timeout, context.DeadlineExceeded)}
	}
	return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, cause.Neutron(err, false))
}

// portQuery builds the GET /v2.0/ports query string. gophercloud's ports.ListOpts cannot express
// it: it has no fields parameter and takes a single network_id and device_owner, while router mode
// needs several of each (Neutron ORs repeated values of one filter).
type portQuery struct {
	networkIDs   []string
	deviceID     string
	deviceOwners []string
	ipAddress    string
	macAddress   string
	fields       []string
}

var _ ports.ListOptsBuilder = portQuery{}

// ToPortListQuery implements ports.ListOptsBuilder.
func (q portQuery) ToPortListQuery() (string, error) {
	v := url.Values{}
	for _, id := range q.networkIDs {
		v.Add("network_id", id)
	}
	if q.deviceID != "" {
		v.Set("device_id", q.deviceID)
	}
	for _, o := range q.deviceOwners {
		v.Add("device_owner", o)
	}
	if q.ipAddress != "" {
		v.Set("fixed_ips", "ip_address="+q.ipAddress)
	}
	if q.macAddress != "" {
		v.Set("mac_address", q.macAddress)
	}
	for _, f := range q.fields {
		v.Add("fields", f)
	}
	return "?" + v.Encode(), nil
}

// candidate is a port that owns the target address, as far as a resolver needs to know it.
type candidate struct {
	id, deviceID, projectID, tenantID, networkID string
}

// pick applies neutron-metadata-agent's rule to the ports owning t in scope: exactly one, and it
// must be bound to an instance (non-empty device_id). Shared by every Resolver in this package.
func pick(scope Scope, t target, cands []candidate) (Instance, error) {
	switch len(cands) {
	case 0:
		return Instance{}, fmt.Errorf("resolve %s on %s: %w", t, scope, ErrNotFound)
	case 1:
	default:
		ids := make([]string, len(cands))
		for i, c := range cands {
			ids[i] = c.id
		}
		slices.Sort(ids)
		return Instance{}, fmt.Errorf("resolve %s on %s: %w", t, scope, &AmbiguousError{PortIDs: ids})
	}
	c := cands[0]
	if c.deviceID == "" {
		return Instance{}, fmt.Errorf("resolve %s on %s: port %s is not bound to an instance (empty device_id): %w", t, scope, c.id, ErrNotFound)
	}
	return Instance{
		InstanceID: c.deviceID,
		ProjectID:  cmp.Or(c.projectID, c.tenantID),
		PortID:     c.id,
		NetworkID:  c.networkID,
	}, nil
}

// checkQuery rejects a Query no listener can make (a caller bug, not a lookup result) and returns
// what a port must match. Shared by every Resolver in this package.
func checkQuery(q Query) (target, error) {
	if (q.Scope.Kind != KindNetwork && q.Scope.Kind != KindRouter) || strings.TrimSpace(q.Scope.ID) == "" {
		return target{}, fmt.Errorf("resolve: invalid scope %q", q.Scope.String())
	}
	t, err := targetFor(q.Addr)
	if err != nil {
		return target{}, fmt.Errorf("resolve %s on %s: %w", q.Addr, q.Scope, err)
	}
	return t, nil
}
