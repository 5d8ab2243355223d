package resolve

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// DefaultNeutronTimeout bounds one Resolve call against Neutron when NeutronOptions.Timeout is zero.
const DefaultNeutronTimeout = 3 * time.Second

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
	// Timeout bounds one Resolve call, all of its Neutron requests together (router mode may make
	// two). Zero means DefaultNeutronTimeout. There are no retries: the cache in front of the
	// resolver coalesces lookups and serves stale answers while Neutron is down.
	Timeout time.Duration
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
// The credentials behind the client must see the ports of every project (neutron's admin or
// service role): with a project-scoped user, other projects' ports are silently missing and their
// VMs get ErrNotFound.
//
// Errors: ErrNotFound (wrapped) when no port matches or the single match has no device_id (a port
// that is not bound to an instance, which nova would reject anyway); *AmbiguousError (wrapped)
// when several ports match; ErrUnavailable (wrapped) on transport errors, timeouts, any non-2xx
// answer and unreadable bodies. Neutron answering 401 or 403 is ErrUnavailable too, with a message
// that points the operator at the credentials. When the caller's ctx ends first the error wraps
// both ErrUnavailable and the context's error.
type Neutron struct {
	client  *gophercloud.ServiceClient
	timeout time.Duration
	routers *routerNets
}

var _ Resolver = (*Neutron)(nil)

// NewNeutron returns a resolver that looks ports up through client, a gophercloud network (v2.0)
// service client.
func NewNeutron(client *gophercloud.ServiceClient, opts NeutronOptions) *Neutron {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultNeutronTimeout
	}
	return &Neutron{client: client, timeout: timeout, routers: newRouterNets(opts.RouterNetworksTTL, time.Now)}
}

// Resolve finds the one port in q.Scope that owns q.Addr.
func (n *Neutron) Resolve(ctx context.Context, q Query) (Instance, error) {
	t, err := checkQuery(q)
	if err != nil {
		return Instance{}, err
	}
	callCtx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()

	if q.Scope.Kind == KindNetwork {
		return n.resolveOn(ctx, callCtx, q, t, []string{q.Scope.ID})
	}
	networks, listed, err := n.routers.get(callCtx, q.Scope.ID, 0, n.routerNetworks)
	if err != nil {
		return Instance{}, n.unavailable(ctx, callCtx, fmt.Sprintf("resolve %s on %s: list the router's interface ports", t, q.Scope), err)
	}
	inst, err := n.resolveOn(ctx, callCtx, q, t, networks)
	if listed || !errors.Is(err, ErrNotFound) {
		return inst, err
	}
	// Not found with a reused list: the VM's network may have been attached since.
	again, relisted, lerr := n.routers.get(callCtx, q.Scope.ID, routerNetworksRecheck, n.routerNetworks)
	if lerr != nil || !relisted || slices.Equal(again, networks) {
		return inst, err
	}
	return n.resolveOn(ctx, callCtx, q, t, again)
}

// resolveOn finds the one port on networks (sorted, distinct) that owns t.
func (n *Neutron) resolveOn(ctx, callCtx context.Context, q Query, t target, networks []string) (Instance, error) {
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
	err := n.list(callCtx, pq, func(p ports.Port) {
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
			return Instance{}, fmt.Errorf("resolve %s on %s: Neutron returned port %s of network %q, which was not asked for: %w",
				t, q.Scope, c.id, c.networkID, ErrUnavailable)
		}
	}
	return pick(q.Scope, t, cands)
}

// routerNetworks returns the sorted, distinct networks of the router's interface ports.
func (n *Neutron) routerNetworks(ctx context.Context, routerID string) ([]string, error) {
	var nets []string
	err := n.list(ctx, portQuery{
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
func (n *Neutron) list(ctx context.Context, q portQuery, each func(ports.Port)) error {
	pager := ports.List(n.client, q).WithPageCreator(func(r pagination.PageResult) pagination.Page {
		return checkedPortPage{ports.PortPage{LinkedPageBase: pagination.LinkedPageBase{PageResult: r}}}
	})
	return pager.EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		ps, err := ports.ExtractPorts(page.(checkedPortPage).PortPage)
		if err != nil {
			return false, err
		}
		for _, p := range ps {
			each(p)
		}
		return true, nil
	})
}

// unavailable turns a failed Neutron call into an ErrUnavailable error that says why.
func (n *Neutron) unavailable(ctx, callCtx context.Context, what string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s: the caller gave up: %w: %w", what, ErrUnavailable, ctxErr)
	}
	if errors.Is(callCtx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s: Neutron did not answer within %s: %w: %w", what, n.timeout, ErrUnavailable, context.DeadlineExceeded)
	}
	if code, ok := responseCode(err); ok {
		detail := neutronMessage(code.Body)
		switch code.Actual {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%s: Neutron refused the request (HTTP %d%s); check the credentials (clouds.yaml entry, OS_* variables) "+
				"and that the user may list the ports of every project (admin or service role): %w",
				what, code.Actual, detail, ErrUnavailable)
		default:
			return fmt.Errorf("%s: Neutron answered HTTP %d%s: %w", what, code.Actual, detail, ErrUnavailable)
		}
	}
	var reauth *gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &reauth) {
		return fmt.Errorf("%s: could not re-authenticate with Keystone (%v); check the credentials: %w", what, reauth.ErrReauth, ErrUnavailable)
	}
	return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
}

// responseCode finds gophercloud's unexpected-status error in err's chain, as a value or pointer.
func responseCode(err error) (gophercloud.ErrUnexpectedResponseCode, bool) {
	var v gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &v) {
		return v, true
	}
	var p *gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &p) && p != nil {
		return *p, true
	}
	return v, false
}

// neutronMessage extracts the message of a Neutron error body ({"NeutronError": {"message": ...}})
// as ": <message>", shortened; "" when there is none.
func neutronMessage(body []byte) string {
	var e struct {
		NeutronError struct {
			Message string `json:"message"`
		} `json:"NeutronError"`
	}
	if json.Unmarshal(body, &e) != nil || e.NeutronError.Message == "" {
		return ""
	}
	msg := e.NeutronError.Message
	const maxLen = 200
	if len(msg) > maxLen {
		msg = msg[:maxLen] + "..."
	}
	return ": " + msg
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

// checkedPortPage is a ports page that refuses a body without a "ports" list, so that a proxy's
// HTML page or an empty object is reported as an error instead of reading as "no port".
type checkedPortPage struct {
	ports.PortPage
}

// IsEmpty implements pagination.Page, checking the body's shape first.
func (p checkedPortPage) IsEmpty() (bool, error) {
	if p.StatusCode == http.StatusNoContent {
		return true, nil
	}
	body, ok := p.Body.(map[string]any)
	if !ok {
		return false, fmt.Errorf("response is not a JSON object (Content-Type %q)", p.Header.Get("Content-Type"))
	}
	if _, ok := body["ports"].([]any); !ok {
		return false, errors.New(`response has no "ports" list`)
	}
	return p.PortPage.IsEmpty()
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
