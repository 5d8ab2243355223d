package source

// Agents mode follows Neutron's scheduling of networks to DHCP agents (and routers to L3 agents):
// the networkdhcpagentbindings and routerl3agentbindings tables. Neutron's API shows those only per
// agent (GET /v2.0/agents/<id>/dhcp-networks, .../l3-routers) or per network or router, and they
// carry no revision: a binding is not a standard-attribute resource and does not bump its network's
// revision_number (neutron/db/network_dhcp_agent_binding/models.py has no revises_on_change). So the
// answer is read per agent, as before, but only for the agents whose scheduling may have changed
// since the last poll; the others keep what their last read gave. What changes with the scheduling,
// and can be listed in one request, is the ports the agents bind to their host (neutron Zed, as
// Debian 12 ships it):
//
//   - DHCP: the agent hosting a network creates (or claims) a port with device_owner network:dhcp,
//     binding:host_id its host and device_id dhcp<uuid5(DNS, short host name)>-<network id>
//     (neutron/api/rpc/handlers/dhcp_rpc.py create_dhcp_port and update_dhcp_port,
//     neutron/agent/linux/dhcp.py DeviceManager.setup_dhcp_port, neutron/common/utils.py
//     get_dhcp_agent_device_id). Taking a network off an agent (the API, or rescheduling away from
//     a dead agent: neutron/db/agentschedulers_db.py remove_network_from_dhcp_agent) deletes the
//     binding, then sets the port's device_id to reserved_dhcp_port; the next agent claims the
//     reserved port and sets its own device_id and host. An agent that stops serving a network
//     (network or agent administratively down, DHCP disabled) deletes its port (release_dhcp_port)
//     while the binding stays. A dead agent changes nothing: its bindings and ports stay until it
//     is rescheduled.
//   - L3: the agent hosting a router binds the router's ports to its host when it syncs
//     (neutron/api/rpc/handlers/l3_rpc.py _ensure_host_set_on_ports): legacy routers' gateway and
//     interfaces; for HA routers each agent's network:router_ha_interface port, the others follow
//     the active agent; for DVR, the centralized gateway and SNAT ports go to the SNAT host
//     (distributed interfaces have no single host). Device owners: ROUTER_PORT_OWNERS and
//     DEVICE_OWNER_ROUTER_HA_INTF in neutron_lib/constants.py.
//
// Every poll lists the agents and those ports (fields= keeps the answers small, pages are
// followed) and re-reads the scheduling of an agent that is new, or whose ports (by
// binding:host_id, or for DHCP by the host named in device_id) changed. A binding change that no
// port shows — a network added by hand to an agent that never sets it up, a legacy router with no
// ports — is still found: every poll also re-reads one more agent of each type, in turn, so each
// agent is re-read at least once every <number of agents> polls. With nothing changed a poll is
// two listings plus one agent per type, whatever the number of agents; the first poll reads every
// agent, as every poll did before.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	uuidpkg "github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/agents"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"

	"github.com/metaproxy/metaproxy/pkg/neutronlist"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// agentKind is one type of agent whose scheduling the source follows.
type agentKind struct {
	agentType string       // agent_type as Neutron reports it
	scope     resolve.Kind // what it hosts: networks or routers
	endpoint  string       // the per-agent listing of what it hosts
	// owners are the device owners of the ports its scheduling moves; deviceHost says their
	// device_id names the host (DHCP ports).
	owners     []string
	deviceHost bool
}

var (
	dhcpAgents = agentKind{agentType: "DHCP agent", scope: resolve.KindNetwork, endpoint: EndpointAgentDHCPNetworks,
		owners: []string{"network:dhcp"}, deviceHost: true}
	l3Agents = agentKind{agentType: "L3 agent", scope: resolve.KindRouter, endpoint: EndpointAgentL3Routers,
		owners: []string{"network:router_interface", "network:router_gateway", "network:router_ha_interface",
			"network:ha_router_replicated_interface", "network:router_interface_distributed", "network:router_centralized_snat"}}
)

// kinds returns the agent types the options follow.
func (n *Neutron) kinds() []agentKind {
	var out []agentKind
	if n.opts.Networks {
		out = append(out, dhcpAgents)
	}
	if n.opts.Routers {
		out = append(out, l3Agents)
	}
	return out
}

// scheduling is what agents mode learnt in its last successful poll.
type scheduling struct {
	agents  map[string]agentRecord // by agent id
	checked map[string]string      // agent type -> the agent re-read in turn last
}

// agentRecord is one agent as last read.
type agentRecord struct {
	host   string
	ports  [sha256.Size]byte // its ports when its scheduling was read
	scopes []string          // the networks or routers it hosted then, sorted
}

// portRow is what the ports listing asks for.
type portRow struct {
	ID          string `json:"id"`
	NetworkID   string `json:"network_id"`
	DeviceID    string `json:"device_id"`
	DeviceOwner string `json:"device_owner"`
	HostID      string `json:"binding:host_id"`
}

func (n *Neutron) agents(ctx context.Context, nodes Nodes, calls requests) error {
	kinds := n.kinds()
	all, err := n.listAgents(ctx, kinds, calls)
	if err != nil {
		return err
	}
	ports, err := n.listSchedulingPorts(ctx, kinds, calls)
	if err != nil {
		return err
	}
	next := scheduling{agents: make(map[string]agentRecord, len(all)), checked: map[string]string{}}
	for _, k := range kinds {
		var of []agents.Agent
		for _, a := range all {
			if a.AgentType == k.agentType {
				of = append(of, a)
			}
		}
		slices.SortFunc(of, func(a, b agents.Agent) int { return strings.Compare(a.ID, b.ID) })
		prints := k.fingerprints(of, ports)
		check := nextToCheck(of, n.scheduled.checked[k.agentType])
		for _, a := range of {
			rec, known := n.scheduled.agents[a.ID]
			stale := !known || rec.host != a.Host || rec.ports != prints[a.ID]
			if stale || a.ID == check {
				scopes, err := n.scopesOf(ctx, k, a, calls)
				if err != nil {
					return err
				}
				if !stale && !slices.Equal(scopes, rec.scopes) {
					n.log.Info("agent scheduling changed with no port change (found re-reading agents in turn)",
						"agent", a.ID, "host", a.Host, "type", k.agentType, "before", len(rec.scopes), "now", len(scopes))
				}
				rec = agentRecord{host: a.Host, ports: prints[a.ID], scopes: scopes}
			}
			next.agents[a.ID] = rec
			if _, ok := nodes[a.Host]; !ok {
				nodes[a.Host] = nil
			}
			for _, id := range rec.scopes {
				n.add(nodes, a.Host, k.scope, id)
			}
		}
		next.checked[k.agentType] = check
	}
	n.scheduled = next
	return nil
}

// nextToCheck returns the agent to re-read in turn after last: the next id, wrapping around.
func nextToCheck(sorted []agents.Agent, last string) string {
	if len(sorted) == 0 {
		return ""
	}
	for _, a := range sorted {
		if a.ID > last {
			return a.ID
		}
	}
	return sorted[0].ID
}

// query is a Neutron list query with repeated filters and fields=, which gophercloud's ListOpts
// cannot express.
type query url.Values

func (q query) ToAgentListQuery() (string, error) { return "?" + url.Values(q).Encode(), nil }
func (q query) ToPortListQuery() (string, error)  { return "?" + url.Values(q).Encode(), nil }

func (n *Neutron) newQuery(fields ...string) query {
	q := query{"fields": fields}
	if n.opts.PageSize > 0 {
		q["limit"] = []string{strconv.Itoa(n.opts.PageSize)}
	}
	return q
}

// listAgents lists the agents of kinds, alive or not and whatever their admin state: a dead agent's
// networks stay scheduled to it until Neutron moves them.
func (n *Neutron) listAgents(ctx context.Context, kinds []agentKind, calls requests) ([]agents.Agent, error) {
	q := n.newQuery("id", "host", "agent_type")
	for _, k := range kinds {
		q["agent_type"] = append(q["agent_type"], k.agentType)
	}
	var out []agents.Agent
	err := listPages(ctx, agents.List(n.client, q), calls, EndpointAgents, "agents",
		func(p neutronlist.Page) error {
			page, err := agents.ExtractAgents(agents.AgentPage{LinkedPageBase: p.LinkedPageBase})
			if err != nil {
				return fmt.Errorf("decode agents: %w", err)
			}
			out = append(out, page...)
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// listSchedulingPorts lists the ports whose binding follows the scheduling of kinds.
func (n *Neutron) listSchedulingPorts(ctx context.Context, kinds []agentKind, calls requests) ([]portRow, error) {
	q := n.newQuery("id", "network_id", "device_id", "device_owner", "binding:host_id")
	for _, k := range kinds {
		q["device_owner"] = append(q["device_owner"], k.owners...)
	}
	var out []portRow
	err := listPages(ctx, ports.List(n.client, q), calls, EndpointPorts, "ports",
		func(p neutronlist.Page) error {
			var page []portRow
			if err := ports.ExtractPortsInto(ports.PortPage{LinkedPageBase: p.LinkedPageBase}, &page); err != nil {
				return fmt.Errorf("decode ports: %w", err)
			}
			out = append(out, page...)
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("list agents' ports: %w", err)
	}
	return out, nil
}

// scopesOf reads what agent a hosts, sorted.
func (n *Neutron) scopesOf(ctx context.Context, k agentKind, a agents.Agent, calls requests) ([]string, error) {
	calls[k.endpoint]++
	var ids []string
	if k.scope == resolve.KindRouter {
		res := agents.ListL3Routers(ctx, n.client, a.ID)
		err := neutronlist.Check(res.Result, "routers")
		rs, xerr := res.Extract()
		if err = cmp.Or(err, xerr); err != nil {
			return nil, fmt.Errorf("list routers of L3 agent %s on %s: %w", a.ID, a.Host, err)
		}
		for _, r := range rs {
			ids = append(ids, r.ID)
		}
	} else {
		res := agents.ListDHCPNetworks(ctx, n.client, a.ID)
		err := neutronlist.Check(res.Result, "networks")
		nets, xerr := res.Extract()
		if err = cmp.Or(err, xerr); err != nil {
			return nil, fmt.Errorf("list networks of DHCP agent %s on %s: %w", a.ID, a.Host, err)
		}
		for _, nw := range nets {
			ids = append(ids, nw.ID)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// fingerprints digests, for every agent of this kind, the ports of this kind bound to its host (or,
// for DHCP, whose device_id names its host): when the digest changes, so may its scheduling.
func (k agentKind) fingerprints(of []agents.Agent, list []portRow) map[string][sha256.Size]byte {
	byHost, byDevice := map[string][]string{}, map[string][]string{}
	for _, a := range of {
		if a.Host == "" {
			continue
		}
		byHost[a.Host] = append(byHost[a.Host], a.ID)
		if k.deviceHost {
			byDevice[dhcpDeviceHost(a.Host)] = append(byDevice[dhcpDeviceHost(a.Host)], a.ID)
		}
	}
	lines := map[string][]string{}
	for _, p := range list {
		if !slices.Contains(k.owners, p.DeviceOwner) {
			continue
		}
		ids := slices.Clone(byHost[p.HostID])
		if host, ok := dhcpDeviceIDHost(p.DeviceID); ok && k.deviceHost {
			ids = append(ids, byDevice[host]...)
		}
		slices.Sort(ids)
		line := strings.Join([]string{p.ID, p.DeviceID, p.NetworkID, p.DeviceOwner, p.HostID}, " ")
		for _, id := range slices.Compact(ids) {
			lines[id] = append(lines[id], line)
		}
	}
	out := make(map[string][sha256.Size]byte, len(of))
	for _, a := range of {
		l := lines[a.ID]
		slices.Sort(l)
		out[a.ID] = sha256.Sum256([]byte(strings.Join(l, "\n")))
	}
	return out
}

// dhcpDeviceHost is the host part of the device_id of the DHCP ports of the agent on host:
// uuid5(NAMESPACE_DNS, the host name up to its first dot), as neutron/common/utils.py
// get_dhcp_agent_device_id makes it.
func dhcpDeviceHost(host string) string {
	short, _, _ := strings.Cut(host, ".")
	return uuidpkg.NewSHA1(uuidpkg.NameSpaceDNS, []byte(short)).String()
}

// dhcpDeviceIDHost returns the host uuid of a DHCP port's device_id, dhcp<uuid>-<network>[-<seg>].
func dhcpDeviceIDHost(deviceID string) (string, bool) {
	const prefix, uuidLen = "dhcp", 36
	if !strings.HasPrefix(deviceID, prefix) || len(deviceID) < len(prefix)+uuidLen+1 || deviceID[len(prefix)+uuidLen] != '-' {
		return "", false
	}
	return deviceID[len(prefix) : len(prefix)+uuidLen], true
}
