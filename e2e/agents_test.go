//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/agents"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/routers"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// startCloud starts neutron-server and nova (no agent) for a test.
func startCloud(t *testing.T, ctx context.Context) *openstack.Cloud {
	t.Helper()
	if err := openstack.Available(false); err != nil {
		t.Skipf("OpenStack fixture cannot run here: %v", err)
	}
	cloud, err := openstack.Start(ctx, openstack.Options{BaseDir: filepath.Join(t.TempDir(), "openstack"), SharedSecret: e2eSecret,
		Logf: t.Logf, StopGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("OpenStack logs:\n%s", cloud.Logs())
		}
		if err := cloud.Close(); err != nil {
			t.Errorf("close cloud: %v", err)
		}
	})
	return cloud
}

// neutronRequests counts the requests a client sends to Neutron, by the source's endpoint names.
type neutronRequests struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *neutronRequests) wrap(base http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		p := strings.TrimPrefix(r.URL.Path, "/v2.0/")
		ep := p
		switch {
		case strings.HasPrefix(p, "agents/") && strings.HasSuffix(p, "/dhcp-networks"):
			ep = source.EndpointAgentDHCPNetworks
		case strings.HasPrefix(p, "agents/") && strings.HasSuffix(p, "/l3-routers"):
			ep = source.EndpointAgentL3Routers
		}
		c.mu.Lock()
		c.n[ep]++
		c.mu.Unlock()
		return base.RoundTrip(r)
	})
}

// take returns the counts so far and starts again.
func (c *neutronRequests) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.n
	c.n = map[string]int{}
	return out
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// countedSource is agents mode as cmd/xds runs it, on its own counted Neutron client.
func countedSource(t *testing.T, ctx context.Context, cloud *openstack.Cloud, o source.NeutronOptions) (*source.Neutron, *neutronRequests) {
	t.Helper()
	counter := &neutronRequests{n: map[string]int{}}
	client, err := osclient.NewNetworkClient(ctx, osclient.Options{NeutronURL: cloud.NeutronURL(), Timeout: time.Minute, WrapTransport: counter.wrap})
	if err != nil {
		t.Fatal(err)
	}
	src, err := source.NewNeutron(client, o)
	if err != nil {
		t.Fatal(err)
	}
	return src, counter
}

// scheduledOnNeutron is Neutron's scheduling read from the other side of the bindings: for every
// network the DHCP agents hosting it (GET /v2.0/networks/<id>/dhcp-agents) and for every router
// the L3 agents (GET /v2.0/routers/<id>/l3-agents); every agent's host is a node.
func scheduledOnNeutron(t *testing.T, ctx context.Context, c *gophercloud.ServiceClient, withRouters bool) source.Nodes {
	t.Helper()
	nodes := source.Nodes{}
	add := func(host string, kind resolve.Kind, id string) {
		nodes[host] = append(nodes[host], source.Network{Kind: kind, ID: id, NamespacePath: source.NamespacePath(source.DefaultNetnsDir, kind, id)})
	}
	pages, err := agents.List(c, agents.ListOpts{}).AllPages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all, err := agents.ExtractAgents(pages)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.AgentType == openstack.DHCPAgent || (withRouters && a.AgentType == openstack.L3Agent) {
			if _, ok := nodes[a.Host]; !ok {
				nodes[a.Host] = nil
			}
		}
	}
	hosting := func(path ...string) []string {
		var body struct {
			Agents []agents.Agent `json:"agents"`
		}
		if _, err := c.Get(ctx, c.ServiceURL(path...), &body, nil); err != nil {
			t.Fatalf("GET %s: %v", strings.Join(path, "/"), err)
		}
		var hosts []string
		for _, a := range body.Agents {
			hosts = append(hosts, a.Host)
		}
		return hosts
	}
	pages, err = networks.List(c, networks.ListOpts{}).AllPages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nets, err := networks.ExtractNetworks(pages)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nets {
		for _, h := range hosting("networks", n.ID, "dhcp-agents") {
			add(h, resolve.KindNetwork, n.ID)
		}
	}
	if withRouters {
		pages, err := routers.List(c, routers.ListOpts{}).AllPages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := routers.ExtractRouters(pages)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			for _, h := range hosting("routers", r.ID, "l3-agents") {
				add(h, resolve.KindRouter, r.ID)
			}
		}
	}
	return source.Normalize(nodes)
}

// ignoreConflict treats 409 (already hosted by that agent: neutron's scheduler got there first) as done.
func ignoreConflict(err error) error {
	if gophercloud.ResponseCodeIs(err, http.StatusConflict) {
		return nil
	}
	return err
}

// TestAgentsModeOnNeutron runs cmd/xds's agents-mode source against the real neutron-server while
// networks and routers are scheduled to agents through Neutron's API (and its own scheduler) and
// the agents set them up as they do: after every step, the source that has been polling all along
// (listings in pages of 2) answers what Neutron says from the networks' and routers' side of the
// bindings, and a poll with nothing changed asks one agent per type.
func TestAgentsModeOnNeutron(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cloud := startCloud(t, ctx)
	c := cloud.NetworkClient()
	src, counter := countedSource(t, ctx, cloud, source.NeutronOptions{Networks: true, Routers: true, PageSize: 2})
	hosts := []string{"e2e-net-1", "e2e-net-2.example.org", "e2e-net-3"}
	dhcp, err := cloud.RegisterAgents(ctx, openstack.DHCPAgent, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	l3, err := cloud.RegisterAgents(ctx, openstack.L3Agent, hosts[:2]...)
	if err != nil {
		t.Fatal(err)
	}
	nets := map[string]openstack.Network{}
	// The DHCP agents set up what they host (ports bound to their host), the L3 agents bind their
	// routers' ports.
	routerPorts := map[string][]string{}
	agentsReact := func() {
		t.Helper()
		want := scheduledOnNeutron(t, ctx, c, true)
		for host, scopes := range want {
			for _, s := range scopes {
				var err error
				if s.Kind == resolve.KindRouter {
					err = cloud.BindPorts(ctx, host, routerPorts[s.ID]...)
				} else if n, ok := nets[s.ID]; ok {
					_, err = cloud.SetUpDHCP(ctx, n.ID, n.SubnetID, host)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	check := func(step string) {
		t.Helper()
		agentsReact()
		got, err := src.Networks(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if diff := cmp.Diff(scheduledOnNeutron(t, ctx, c, true), got); diff != "" {
			t.Fatalf("%s: the source differs from Neutron's bindings (-neutron +source):\n%s", step, diff)
		}
		t.Logf("%s: %v", step, counter.take())
	}
	check("agents only")
	for i := range 4 {
		n, err := cloud.CreateNetwork(ctx, fmt.Sprintf("agents-%d", i), fmt.Sprintf("10.9.%d.0/24", i))
		if err != nil {
			t.Fatal(err)
		}
		nets[n.ID] = n
		host := hosts[i%2]
		if err := ignoreConflict(agents.ScheduleDHCPNetwork(ctx, c, dhcp[host], agents.ScheduleDHCPNetworkOpts{NetworkID: n.ID}).ExtractErr()); err != nil {
			t.Fatal(err)
		}
	}
	check("networks scheduled and set up")
	got, err := src.Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	steady := counter.take()
	if steady[source.EndpointAgentDHCPNetworks] != 1 || steady[source.EndpointAgentL3Routers] != 1 {
		t.Errorf("a poll with nothing changed made %v: want one agent of each type read in turn", steady)
	}
	if diff := cmp.Diff(scheduledOnNeutron(t, ctx, c, true), got); diff != "" {
		t.Fatalf("steady poll (-neutron +source):\n%s", diff)
	}

	var moved openstack.Network
	for _, n := range nets {
		moved = n
		break
	}
	from := ""
	for host, scopes := range got {
		for _, s := range scopes {
			if s.ID == moved.ID {
				from = host
			}
		}
	}
	// neutron-server reserves the DHCP port itself (remove_network_from_dhcp_agent); the next agent
	// claims it.
	if err := agents.RemoveDHCPNetwork(ctx, c, dhcp[from], moved.ID).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	check("network taken off its agent")
	if err := ignoreConflict(agents.ScheduleDHCPNetwork(ctx, c, dhcp[hosts[2]], agents.ScheduleDHCPNetworkOpts{NetworkID: moved.ID}).ExtractErr()); err != nil {
		t.Fatal(err)
	}
	check("network on the third agent, which claimed the reserved port")

	var gone openstack.Network
	for _, n := range nets {
		if n.ID != moved.ID {
			gone = n
			break
		}
	}
	if err := cloud.DeleteNetwork(ctx, gone); err != nil {
		t.Fatal(err)
	}
	delete(nets, gone.ID)
	check("a network deleted")

	var keep []openstack.Network
	for _, n := range nets {
		keep = append(keep, n)
	}
	r, err := cloud.CreateRouter(ctx, "agents-router", keep[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range r.InterfacePorts {
		routerPorts[r.ID] = append(routerPorts[r.ID], p)
	}
	if err := ignoreConflict(agents.ScheduleL3Router(ctx, c, l3[hosts[0]], agents.ScheduleL3RouterOpts{RouterID: r.ID}).ExtractErr()); err != nil {
		t.Fatal(err)
	}
	check("router on an L3 agent, its ports bound there")

	if err := agents.Delete(ctx, c, dhcp[hosts[1]]).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	check("a DHCP agent deleted (its bindings go, its ports stay)")
}

// TestAgentsModeRequestsPerPollOnNeutron measures, on the real neutron-server, the Neutron requests
// and the time of agents mode's first poll (every agent read, as every poll was before) and of a
// poll with nothing changed, with 10 and then 1000 DHCP agents (20 networks scheduled). The steady
// poll must not depend on the number of agents.
func TestAgentsModeRequestsPerPollOnNeutron(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cloud := startCloud(t, ctx)
	c := cloud.NetworkClient()
	var hosts []string
	for i := range 1000 {
		hosts = append(hosts, fmt.Sprintf("e2e-net-%04d", i))
	}
	t0 := time.Now()
	ids, err := cloud.RegisterAgents(ctx, openstack.DHCPAgent, hosts[:10]...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		n, err := cloud.CreateNetwork(ctx, fmt.Sprintf("perpoll-%d", i), fmt.Sprintf("10.8.%d.0/24", i))
		if err != nil {
			t.Fatal(err)
		}
		host := hosts[i%10]
		if err := ignoreConflict(agents.ScheduleDHCPNetwork(ctx, c, ids[host], agents.ScheduleDHCPNetworkOpts{NetworkID: n.ID}).ExtractErr()); err != nil {
			t.Fatal(err)
		}
		if _, err := cloud.SetUpDHCP(ctx, n.ID, n.SubnetID, host); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("10 agents, 20 networks set up in %s", time.Since(t0).Round(time.Second))
	measure := func(agentCount int) {
		src, counter := countedSource(t, ctx, cloud, source.NeutronOptions{Networks: true})
		var rows []string
		var steady map[string]int
		for _, poll := range []string{"first", "steady", "steady"} {
			t0 := time.Now()
			nodes, err := src.Networks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(t0)
			reqs := counter.take()
			total := 0
			for _, n := range reqs {
				total += n
			}
			if len(nodes) != agentCount {
				t.Fatalf("%d nodes, want %d", len(nodes), agentCount)
			}
			if want := scheduledOnNeutron(t, ctx, c, false); !cmp.Equal(want, nodes) {
				t.Fatalf("%s poll (-neutron +source):\n%s", poll, cmp.Diff(want, nodes))
			}
			counter.take()
			rows = append(rows, fmt.Sprintf("%d agents, %s poll: %d requests (%v) in %s", agentCount, poll, total, reqs, took.Round(time.Millisecond)))
			steady = reqs
		}
		if want := (map[string]int{"agents": 1, "ports": 1, source.EndpointAgentDHCPNetworks: 1}); !cmp.Equal(want, steady) {
			t.Errorf("%d agents: a poll with nothing changed made %v, want %v", agentCount, steady, want)
		}
		for _, r := range rows {
			t.Log(r)
		}
	}
	measure(10)
	t0 = time.Now()
	if _, err := cloud.RegisterAgents(ctx, openstack.DHCPAgent, hosts[10:]...); err != nil {
		t.Fatal(err)
	}
	t.Logf("990 more agents registered in %s", time.Since(t0).Round(time.Second))
	measure(1000)
}
