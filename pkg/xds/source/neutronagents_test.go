package source

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/agents"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// agentsAsOfMain is agents mode as it was before it followed ports (main at 93d374e,
// pkg/xds/source/neutron.go): list the agents of each type, then ask every agent what it hosts.
// It is the reference the source must agree with.
func agentsAsOfMain(ctx context.Context, client *gophercloud.ServiceClient, routers bool) (Nodes, error) {
	type kind struct {
		agentType string
		scope     resolve.Kind
		hosted    func(agent string) ([]string, error)
	}
	kinds := []kind{{"DHCP agent", resolve.KindNetwork, func(agent string) ([]string, error) {
		nets, err := agents.ListDHCPNetworks(ctx, client, agent).Extract()
		var ids []string
		for _, n := range nets {
			ids = append(ids, n.ID)
		}
		return ids, err
	}}}
	if routers {
		kinds = append(kinds, kind{"L3 agent", resolve.KindRouter, func(agent string) ([]string, error) {
			rs, err := agents.ListL3Routers(ctx, client, agent).Extract()
			var ids []string
			for _, r := range rs {
				ids = append(ids, r.ID)
			}
			return ids, err
		}})
	}
	nodes := Nodes{}
	for _, k := range kinds {
		pages, err := agents.List(client, agents.ListOpts{AgentType: k.agentType}).AllPages(ctx)
		if err != nil {
			return nil, err
		}
		all, err := agents.ExtractAgents(pages)
		if err != nil {
			return nil, err
		}
		for _, a := range all {
			ids, err := k.hosted(a.ID)
			if err != nil {
				return nil, err
			}
			if _, ok := nodes[a.Host]; !ok {
				nodes[a.Host] = nil
			}
			for _, id := range ids {
				if contract.ValidID(id) {
					nodes[a.Host] = append(nodes[a.Host], Network{Kind: k.scope, ID: id, NamespacePath: NamespacePath(DefaultNetnsDir, k.scope, id)})
				}
			}
		}
	}
	return Normalize(nodes), nil
}

func netID(i int) string    { return fmt.Sprintf("%08x-1111-4111-8111-%012x", i, i) }
func routerID(i int) string { return fmt.Sprintf("%08x-2222-4222-8222-%012x", i, i) }

// TestNeutronAgentsFollowsScheduling walks through what Neutron and its agents do to scheduling
// (each step as neutron does it, see neutronagents.go) and checks after every step, once the
// agents have reacted, that a long-running source answers what the implementation before it
// (agentsAsOfMain) answers on the same data, with pages of 2.
func TestNeutronAgentsFollowsScheduling(t *testing.T) {
	c := newFakeCloud()
	c.pageMax = 2
	client := c.client(t)
	reader := sdkmetric.NewManualReader()
	src, err := NewNeutron(client, NeutronOptions{Networks: true, Routers: true, MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	if err != nil {
		t.Fatal(err)
	}
	agree := func(step string) {
		t.Helper()
		want, err := agentsAsOfMain(t.Context(), client, true)
		if err != nil {
			t.Fatal(err)
		}
		c.requestsTo()
		got, err := src.Networks(t.Context())
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%s: source and the per-agent reference differ (-reference +source):\n%s", step, diff)
		}
		answered := 0
		for _, n := range c.requestsTo() {
			answered += n
		}
		if counted := perPoll(t, reader); counted != int64(answered) {
			t.Errorf("%s: the source counted %d requests, Neutron answered %d (every page one)", step, counted, answered)
		}
	}
	d1, d2, d3 := c.register("DHCP agent", "net-1"), c.register("DHCP agent", "net-2.example.org"), c.register("DHCP agent", "net-3")
	l1, l2 := c.register("L3 agent", "net-1"), c.register("L3 agent", "net-2.example.org")
	agree("agents without anything")

	for i, a := range []string{d1, d1, d2, d3} {
		c.bind(a, netID(i))
		c.dhcpSetsUp(a, netID(i))
	}
	agree("networks scheduled and set up")

	c.bind(d2, netID(0)) // a second agent for network 0 (dhcp_agents_per_network = 2)
	c.dhcpSetsUp(d2, netID(0))
	agree("network 0 on a second agent")

	c.unbindNetwork(d1, netID(1)) // remove_network_from_dhcp_agent: port reserved
	agree("network 1 taken off its agent")
	c.bind(d3, netID(1))
	c.dhcpSetsUp(d3, netID(1)) // the new agent claims the reserved port
	agree("network 1 on another agent, reserved port claimed")

	c.kill(d2)
	agree("agent 2 dead: it keeps its networks")
	c.unbindNetwork(d2, netID(2)) // rescheduling away from the dead agent
	c.bind(d1, netID(2))
	c.dhcpSetsUp(d1, netID(2))
	agree("network 2 rescheduled away from the dead agent")

	c.releasePorts(d3) // admin down: the agent releases its ports, the bindings stay
	agree("agent 3 released its ports")

	c.deleteNetwork(netID(0))
	agree("network 0 deleted")
	c.deleteAgent(d2)
	agree("agent 2 deleted (its ports stay)")
	d4 := c.register("DHCP agent", "net-4")
	c.bind(d4, netID(5))
	c.dhcpSetsUp(d4, netID(5))
	agree("a new agent with a network")

	// Routers: legacy (interface and gateway bound to the hosting agent), HA (one HA port per
	// agent, the others on the active one), moved from one agent to another.
	legacy, ha := routerID(1), routerID(2)
	c.addRouterPort(legacy, "network:router_interface", netID(2))
	c.addRouterPort(legacy, "network:router_gateway", "ext")
	c.bind(l1, legacy)
	c.l3Syncs(l1, legacy)
	agree("legacy router on agent 1")
	c.addRouterPort(ha, "network:router_interface", netID(3))
	haPort1, haPort2 := c.addRouterPort(ha, "network:router_ha_interface", "ha-net"), c.addRouterPort(ha, "network:router_ha_interface", "ha-net")
	c.bind(l1, ha)
	c.bind(l2, ha)
	c.l3Syncs(l1, ha, haPort1)
	c.l3Syncs(l2, ha, haPort2)
	agree("HA router on both agents")
	c.unbindRouter(l1, legacy)
	c.bind(l2, legacy)
	c.l3Syncs(l2, legacy)
	agree("legacy router moved to agent 2")
}

// TestNeutronAgentsRequestsPerPoll: a poll where nothing changed costs the agents listing, the
// ports listing and one agent re-read in turn, whatever the number of agents; the first poll asks
// every agent, as every poll did before; a change re-reads the agents whose ports it moved.
func TestNeutronAgentsRequestsPerPoll(t *testing.T) {
	for _, n := range []int{10, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			c := newFakeCloud()
			var dhcp []string
			for i := range n {
				a := c.register("DHCP agent", fmt.Sprintf("net-%04d", i))
				dhcp = append(dhcp, a)
				c.bind(a, netID(i))
				c.dhcpSetsUp(a, netID(i))
			}
			reader := sdkmetric.NewManualReader()
			src, err := NewNeutron(c.client(t), NeutronOptions{Networks: true, MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
			if err != nil {
				t.Fatal(err)
			}
			poll := func(want map[string]int) {
				t.Helper()
				got, err := src.Networks(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != n {
					t.Fatalf("%d nodes, want %d", len(got), n)
				}
				if diff := cmp.Diff(want, c.requestsTo()); diff != "" {
					t.Errorf("requests Neutron answered (-want +got):\n%s", diff)
				}
				total := 0
				for _, v := range want {
					total += v
				}
				if got := perPoll(t, reader); got != int64(total) {
					t.Errorf("%s = %d, want %d", MetricRequestsPerPoll, got, total)
				}
			}
			poll(map[string]int{EndpointAgents: 1, EndpointPorts: 1, EndpointAgentDHCPNetworks: n})
			poll(map[string]int{EndpointAgents: 1, EndpointPorts: 1, EndpointAgentDHCPNetworks: 1})
			poll(map[string]int{EndpointAgents: 1, EndpointPorts: 1, EndpointAgentDHCPNetworks: 1})
			// Network 5 moves from agent 5 to agent 7: both are re-read, plus the one in turn.
			c.unbindNetwork(dhcp[5], netID(5))
			c.bind(dhcp[7], netID(5))
			c.dhcpSetsUp(dhcp[7], netID(5))
			poll(map[string]int{EndpointAgents: 1, EndpointPorts: 1, EndpointAgentDHCPNetworks: 3})
		})
	}
}

// perPoll reads the requests-per-poll gauge.
func perPoll(t *testing.T, r *sdkmetric.ManualReader) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == "metaproxy.xds.source.requests_per_poll" {
				return g.DataPoints[0].Value
			}
		}
	}
	t.Fatal("no requests_per_poll gauge")
	return 0
}

// TestNeutronAgentsFindsBindingsNoPortShows: a network bound to an agent that never sets it up
// (dead, say) changes no port; re-reading one agent per poll in turn finds it within as many
// polls as there are agents.
func TestNeutronAgentsFindsBindingsNoPortShows(t *testing.T) {
	c := newFakeCloud()
	var ids []string
	for i := range 5 {
		ids = append(ids, c.register("DHCP agent", fmt.Sprintf("net-%d", i)))
	}
	client := c.client(t)
	src, err := NewNeutron(client, NeutronOptions{Networks: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Networks(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.kill(ids[2])
	c.bind(ids[2], netID(9)) // POST /v2.0/agents/<id>/dhcp-networks to a dead agent: no port will come
	want, err := agentsAsOfMain(t.Context(), client, false)
	if err != nil {
		t.Fatal(err)
	}
	for poll := 1; ; poll++ {
		got, err := src.Networks(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if cmp.Equal(want, got) {
			break
		}
		if poll == len(ids) {
			t.Fatalf("after %d polls the source still misses the binding:\n%s", poll, cmp.Diff(want, got))
		}
	}
}

// TestNeutronAgentsErrorKeepsWhatItLearnt: a poll that fails (Neutron refuses one agent's
// listing) is an error and learns nothing, so the next poll still re-reads the agents whose ports
// changed.
func TestNeutronAgentsErrorKeepsWhatItLearnt(t *testing.T) {
	c := newFakeCloud()
	a, b := c.register("DHCP agent", "net-a"), c.register("DHCP agent", "net-b")
	c.bind(a, netID(1))
	c.dhcpSetsUp(a, netID(1))
	client := c.client(t)
	src, err := NewNeutron(client, NeutronOptions{Networks: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Networks(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.bind(b, netID(2))
	c.dhcpSetsUp(b, netID(2))
	c.failOn = b + "/"
	if got, err := src.Networks(t.Context()); err == nil {
		t.Fatalf("poll with a failing agent listing gave %v, want an error", got)
	}
	c.failOn = ""
	got, err := src.Networks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := (Nodes{"net-a": {nw(netID(1))}, "net-b": {nw(netID(2))}}); !cmp.Equal(want, got) {
		t.Errorf("after the failure (-want +got):\n%s", cmp.Diff(want, got))
	}
}

func TestDHCPDeviceHost(t *testing.T) {
	// neutron/common/utils.py: 'dhcp%s-%s' % (uuid.uuid5(uuid.NAMESPACE_DNS, 'net-1'), network_id),
	// /usr/bin/python3 -c "from neutron.common import utils; print(utils.get_dhcp_agent_device_id('N', 'net-1.example.org'))"
	// prints dhcpe28cb0fe-26cc-5fd5-ac9e-33bfb4284fe1-N
	const want = "e28cb0fe-26cc-5fd5-ac9e-33bfb4284fe1"
	for _, host := range []string{"net-1", "net-1.example.org"} {
		if got := dhcpDeviceHost(host); got != want {
			t.Errorf("dhcpDeviceHost(%q) = %s, want %s", host, got, want)
		}
	}
	for id, want := range map[string]string{
		"dhcp" + want + "-" + netA:          want,
		"dhcp" + want + "-" + netA + "-101": want,
		"reserved_dhcp_port":                "",
		"dhcp1234":                          "",
	} {
		got, ok := dhcpDeviceIDHost(id)
		if got != want || ok != (want != "") {
			t.Errorf("dhcpDeviceIDHost(%q) = %q, %v; want %q", id, got, ok, want)
		}
	}
}

// BenchmarkNeutronAgentsPoll reports the Neutron requests one poll of agents mode makes with n DHCP
// agents (one network each), nothing changing, next to the implementation before it
// (agentsAsOfMain) on the same fake neutron-server: requests/poll, counted by the server.
func BenchmarkNeutronAgentsPoll(b *testing.B) {
	for _, n := range []int{10, 1000} {
		c := newFakeCloud()
		for i := range n {
			a := c.register("DHCP agent", fmt.Sprintf("net-%04d", i))
			c.bind(a, netID(i))
			c.dhcpSetsUp(a, netID(i))
		}
		client := c.client(b)
		requests := func() int {
			sum := 0
			for _, v := range c.requestsTo() {
				sum += v
			}
			return sum
		}
		b.Run(fmt.Sprintf("agents=%d/before", n), func(b *testing.B) {
			requests()
			for b.Loop() {
				if _, err := agentsAsOfMain(b.Context(), client, false); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(requests())/float64(b.N), "requests/poll")
		})
		b.Run(fmt.Sprintf("agents=%d/now", n), func(b *testing.B) {
			src, err := NewNeutron(client, NeutronOptions{Networks: true})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := src.Networks(b.Context()); err != nil { // the first poll asks every agent
				b.Fatal(err)
			}
			requests()
			for b.Loop() {
				if _, err := src.Networks(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(requests())/float64(b.N), "requests/poll")
		})
	}
}
