package source

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

// fakeCloud is neutron-server's view of agents, their scheduling (bindings) and the ports that
// follow it, served over HTTP the way neutron-server answers: list filters with repeated values,
// fields=, limit/marker pagination sorted by id with <collection>_links, and the per-agent
// scheduling listings. Its methods change the state the way Neutron and its agents do (see
// neutronagents.go for the source of each behaviour); it counts the requests it answers.
type fakeCloud struct {
	mu       sync.Mutex
	agents   map[string]*fakeAgent
	dhcp     map[string][]string // DHCP agent id -> bound network ids
	l3       map[string][]string // L3 agent id -> bound router ids
	ports    map[string]portRow
	subnets  []map[string]any // mode all
	routers  []string         // mode all
	pageMax  int              // pagination_max_limit; 0: none
	nextID   int
	requests map[string]int // by endpoint, as the source labels them
	fail     *atomic.Bool   // when set and true, answer everything with 503
	failOn   string         // answer requests whose path contains this with 503
}

type fakeAgent struct {
	ID, Host, Type string
	Alive, AdminUp bool
}

func newFakeCloud() *fakeCloud {
	return &fakeCloud{agents: map[string]*fakeAgent{}, dhcp: map[string][]string{}, l3: map[string][]string{},
		ports: map[string]portRow{}, requests: map[string]int{}}
}

func (c *fakeCloud) id(prefix string) string {
	c.nextID++
	return fmt.Sprintf("%s%08d-0000-4000-8000-%012d", prefix, c.nextID, c.nextID)[:36]
}

// register adds an agent, as its first state report does (neutron/db/agents_db.py create_or_update_agent).
func (c *fakeCloud) register(typ, host string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.id("a")
	c.agents[id] = &fakeAgent{ID: id, Host: host, Type: typ, Alive: true, AdminUp: true}
	return id
}

// bind schedules network (DHCP agent) or router (L3 agent) id to agent, as the scheduler or
// POST /v2.0/agents/<id>/dhcp-networks does: a binding, no port yet.
func (c *fakeCloud) bind(agent, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.agents[agent].Type == dhcpAgents.agentType {
		c.dhcp[agent] = append(c.dhcp[agent], id)
	} else {
		c.l3[agent] = append(c.l3[agent], id)
	}
}

// dhcpSetsUp is the DHCP agent on agent's host setting up network: it claims a reserved DHCP port
// of the network or creates its own (DeviceManager.setup_dhcp_port).
func (c *fakeCloud) dhcpSetsUp(agent, network string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	host := c.agents[agent].Host
	device := "dhcp" + dhcpDeviceHost(host) + "-" + network
	for id, p := range c.ports {
		if p.NetworkID == network && p.DeviceOwner == "network:dhcp" && (p.DeviceID == device || p.DeviceID == "reserved_dhcp_port") {
			p.DeviceID, p.HostID = device, host
			c.ports[id] = p
			return
		}
	}
	id := c.id("p")
	c.ports[id] = portRow{ID: id, NetworkID: network, DeviceID: device, DeviceOwner: "network:dhcp", HostID: host}
}

// unbindNetwork is remove_network_from_dhcp_agent: the binding goes, then the agent's DHCP port is
// reserved (device_id reserved_dhcp_port, binding:host_id left as it was).
func (c *fakeCloud) unbindNetwork(agent, network string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dhcp[agent] = slices.DeleteFunc(c.dhcp[agent], func(n string) bool { return n == network })
	device := "dhcp" + dhcpDeviceHost(c.agents[agent].Host) + "-" + network
	for id, p := range c.ports {
		if p.DeviceID == device {
			p.DeviceID = "reserved_dhcp_port"
			c.ports[id] = p
		}
	}
}

// releasePorts is the DHCP agent disabling DHCP for its networks (admin down, network down, DHCP
// off): release_dhcp_port deletes its ports, the bindings stay.
func (c *fakeCloud) releasePorts(agent string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prefix := "dhcp" + dhcpDeviceHost(c.agents[agent].Host) + "-"
	for id, p := range c.ports {
		if strings.HasPrefix(p.DeviceID, prefix) {
			delete(c.ports, id)
		}
	}
}

// kill makes agent miss its heartbeats: nothing else changes.
func (c *fakeCloud) kill(agent string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.agents[agent].Alive = false
}

// deleteAgent is DELETE /v2.0/agents/<id>: its bindings go (ON DELETE CASCADE), its ports stay.
func (c *fakeCloud) deleteAgent(agent string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.agents, agent)
	delete(c.dhcp, agent)
	delete(c.l3, agent)
}

// deleteNetwork deletes a network: its bindings and its ports go.
func (c *fakeCloud) deleteNetwork(network string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, nets := range c.dhcp {
		c.dhcp[a] = slices.DeleteFunc(nets, func(n string) bool { return n == network })
	}
	for id, p := range c.ports {
		if p.NetworkID == network {
			delete(c.ports, id)
		}
	}
}

// addRouterPort adds a port of router (device_id the router id) with device owner, unbound.
func (c *fakeCloud) addRouterPort(router, owner, network string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.id("p")
	c.ports[id] = portRow{ID: id, NetworkID: network, DeviceID: router, DeviceOwner: owner}
	return id
}

// l3Syncs is the L3 agent on agent's host syncing router: it binds the router's ports to its host
// (l3_rpc.py _ensure_host_set_on_ports; for HA, only its own HA port, given as port).
func (c *fakeCloud) l3Syncs(agent, router string, only ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, p := range c.ports {
		if p.DeviceID == router && (len(only) == 0 || slices.Contains(only, id)) {
			p.HostID = c.agents[agent].Host
			c.ports[id] = p
		}
	}
}

// unbindRouter removes router from agent's bindings (its ports keep their host until another agent
// takes them).
func (c *fakeCloud) unbindRouter(agent, router string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.l3[agent] = slices.DeleteFunc(c.l3[agent], func(r string) bool { return r == router })
}

// requestsTo returns the requests answered so far, by endpoint, and resets the count.
func (c *fakeCloud) requestsTo() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.requests
	c.requests = map[string]int{}
	return out
}

// client serves the cloud over HTTP and returns a gophercloud client for it.
func (c *fakeCloud) client(t testing.TB) *gophercloud.ServiceClient {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2.0/agents", func(w http.ResponseWriter, r *http.Request) {
		c.list(w, r, EndpointAgents, "agents", func() []map[string]any {
			var out []map[string]any
			for _, a := range c.agents {
				out = append(out, map[string]any{"id": a.ID, "host": a.Host, "agent_type": a.Type,
					"alive": a.Alive, "admin_state_up": a.AdminUp, "binary": "neutron-agent", "configurations": map[string]any{}})
			}
			return out
		})
	})
	mux.HandleFunc("GET /v2.0/ports", func(w http.ResponseWriter, r *http.Request) {
		c.list(w, r, EndpointPorts, "ports", func() []map[string]any {
			var out []map[string]any
			for _, p := range c.ports {
				out = append(out, map[string]any{"id": p.ID, "network_id": p.NetworkID, "device_id": p.DeviceID,
					"device_owner": p.DeviceOwner, "binding:host_id": p.HostID, "mac_address": "fa:16:3e:00:00:01", "fixed_ips": []any{}})
			}
			return out
		})
	})
	mux.HandleFunc("GET /v2.0/agents/{id}/dhcp-networks", func(w http.ResponseWriter, r *http.Request) {
		c.scheduled(w, r, EndpointAgentDHCPNetworks, "networks", c.dhcp)
	})
	mux.HandleFunc("GET /v2.0/agents/{id}/l3-routers", func(w http.ResponseWriter, r *http.Request) {
		c.scheduled(w, r, EndpointAgentL3Routers, "routers", c.l3)
	})
	mux.HandleFunc("GET /v2.0/subnets", func(w http.ResponseWriter, r *http.Request) {
		c.list(w, r, EndpointSubnets, "subnets", func() []map[string]any { return c.subnets })
	})
	mux.HandleFunc("GET /v2.0/routers", func(w http.ResponseWriter, r *http.Request) {
		c.list(w, r, EndpointRouters, "routers", func() []map[string]any {
			var out []map[string]any
			for _, id := range c.routers {
				out = append(out, map[string]any{"id": id})
			}
			return out
		})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &gophercloud.ServiceClient{
		ProviderClient: &gophercloud.ProviderClient{HTTPClient: *srv.Client()},
		Endpoint:       srv.URL + "/",
		ResourceBase:   srv.URL + "/v2.0/",
	}
}

// failing counts the request and answers 503 when the cloud is told to fail it.
func (c *fakeCloud) failing(w http.ResponseWriter, r *http.Request, endpoint string) bool {
	c.requests[endpoint]++
	if (c.fail != nil && c.fail.Load()) || (c.failOn != "" && strings.Contains(r.URL.Path, c.failOn)) {
		http.Error(w, `{"NeutronError": {"message": "unavailable"}}`, http.StatusServiceUnavailable)
		return true
	}
	return false
}

// list answers a collection GET: filters (a repeated parameter is a list of accepted values),
// fields=, and pagination by id (limit, capped by pageMax, and marker) with a next link when the
// page is full, as neutron's api/v2 pagination helpers do.
func (c *fakeCloud) list(w http.ResponseWriter, r *http.Request, endpoint, collection string, items func() []map[string]any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failing(w, r, endpoint) {
		return
	}
	q := r.URL.Query()
	all := items()
	slices.SortFunc(all, func(a, b map[string]any) int { return strings.Compare(a["id"].(string), b["id"].(string)) })
	var kept []map[string]any
	for _, it := range all {
		ok := true
		for k, vs := range q {
			if k == "fields" || k == "limit" || k == "marker" {
				continue
			}
			if v, has := it[k]; !has || !slices.Contains(vs, fmt.Sprint(v)) {
				ok = false
			}
		}
		if ok && (q.Get("marker") == "" || it["id"].(string) > q.Get("marker")) {
			kept = append(kept, it)
		}
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	if c.pageMax > 0 && (limit <= 0 || limit > c.pageMax) {
		limit = c.pageMax
	}
	body := map[string]any{}
	if limit > 0 && len(kept) >= limit {
		kept = kept[:limit]
		next := url.Values{}
		for k, vs := range q {
			next[k] = vs
		}
		next.Set("limit", strconv.Itoa(limit))
		next.Set("marker", kept[len(kept)-1]["id"].(string))
		body[collection+"_links"] = []map[string]string{{"rel": "next", "href": "http://" + r.Host + r.URL.Path + "?" + next.Encode()}}
	}
	if fields := q["fields"]; len(fields) > 0 {
		for i, it := range kept {
			only := map[string]any{}
			for _, f := range fields {
				if v, ok := it[f]; ok {
					only[f] = v
				}
			}
			kept[i] = only
		}
	}
	if kept == nil {
		kept = []map[string]any{}
	}
	body[collection] = kept
	reply(w, body)
}

// scheduled answers GET /v2.0/agents/<id>/<what>: what the agent is bound to, 404 for no agent.
func (c *fakeCloud) scheduled(w http.ResponseWriter, r *http.Request, endpoint, collection string, bindings map[string][]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failing(w, r, endpoint) {
		return
	}
	id := r.PathValue("id")
	if c.agents[id] == nil {
		http.Error(w, `{"NeutronError": {"type": "AgentNotFound", "message": "Agent `+id+` could not be found."}}`, http.StatusNotFound)
		return
	}
	out := []map[string]any{}
	for _, x := range bindings[id] {
		out = append(out, map[string]any{"id": x, "name": "n-" + x[:4], "admin_state_up": true})
	}
	reply(w, map[string]any{collection: out})
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
