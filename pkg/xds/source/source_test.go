package source

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/gophercloud/gophercloud/v2"
	"go.yaml.in/yaml/v3"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

const (
	netA    = "11111111-1111-4111-8111-111111111111"
	netB    = "22222222-2222-4222-8222-222222222222"
	routerA = "33333333-3333-4333-8333-333333333333"
)

func nw(id string) Network {
	return Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: "/var/run/netns/qdhcp-" + id}
}

func rt(id string) Network {
	return Network{Kind: resolve.KindRouter, ID: id, NamespacePath: "/var/run/netns/qrouter-" + id}
}

// fakeNeutron is a neutron-server with three DHCP agents (compute-1 hosting networks A and B,
// compute-2 dead but still hosting A, compute-3 hosting nothing) and an L3 agent on compute-1
// hosting router A, all set up by their agents; two subnets of A and one of B with DHCP, and
// router A. fail, when set, makes every request fail.
func fakeNeutron(t *testing.T, fail *atomic.Bool) *gophercloud.ServiceClient {
	t.Helper()
	return standardCloud(fail).client(t)
}

func standardCloud(fail *atomic.Bool) *fakeCloud {
	c := newFakeCloud()
	c.fail = fail
	d1, d2 := c.register(dhcpAgents.agentType, "compute-1"), c.register(dhcpAgents.agentType, "compute-2")
	c.register(dhcpAgents.agentType, "compute-3")
	for agent, nets := range map[string][]string{d1: {netB, netA}, d2: {netA}} {
		for _, n := range nets {
			c.bind(agent, n)
			c.dhcpSetsUp(agent, n)
		}
	}
	c.kill(d2)
	l3 := c.register(l3Agents.agentType, "compute-1")
	c.addRouterPort(routerA, "network:router_interface", netA)
	c.bind(l3, routerA)
	c.l3Syncs(l3, routerA)
	c.subnets = []map[string]any{
		{"id": "s1", "network_id": netA, "enable_dhcp": true},
		{"id": "s2", "network_id": netA, "enable_dhcp": true},
		{"id": "s3", "network_id": netB, "enable_dhcp": true},
	}
	c.routers = []string{routerA}
	return c
}

func TestNeutron(t *testing.T) {
	tests := map[string]struct {
		opts NeutronOptions
		want Nodes
	}{
		"agents, networks": {
			opts: NeutronOptions{Mode: ModeAgents, Networks: true},
			want: Nodes{"compute-1": {nw(netA), nw(netB)}, "compute-2": {nw(netA)}, "compute-3": {}},
		},
		"agents, networks and routers": {
			opts: NeutronOptions{Networks: true, Routers: true},
			want: Nodes{"compute-1": {nw(netA), nw(netB), rt(routerA)}, "compute-2": {nw(netA)}, "compute-3": {}},
		},
		"all, one node": {
			opts: NeutronOptions{Mode: ModeAll, NodeID: "lab", Networks: true},
			want: Nodes{"lab": {nw(netA), nw(netB)}},
		},
		"all with routers": {
			opts: NeutronOptions{Mode: ModeAll, NodeID: "lab", Networks: true, Routers: true},
			want: Nodes{"lab": {nw(netA), nw(netB), rt(routerA)}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src, err := NewNeutron(fakeNeutron(t, nil), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := src.Networks(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("nodes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNeutronErrorIsAnError(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	src, err := NewNeutron(fakeNeutron(t, &fail), NeutronOptions{Networks: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.Networks(t.Context())
	if err == nil || got != nil {
		t.Fatalf("Networks = %v, %v; want nil and an error when Neutron fails", got, err)
	}
}

// TestNeutronBodyWithoutTheListIsAnError: a 200 whose body is not the list asked for (a proxy's
// login page, an empty object) fails the poll, so the last good snapshots stay, instead of
// reading as a node with no networks, which would take every listener of the node away.
func TestNeutronBodyWithoutTheListIsAnError(t *testing.T) {
	for _, body := range []struct{ contentType, body, want string }{
		{"application/json", `{}`, "has no"},
		{"text/html", "<html>login</html>", "not a JSON object"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", body.contentType)
			fmt.Fprint(w, body.body)
		}))
		t.Cleanup(srv.Close)
		c := &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{HTTPClient: *srv.Client()},
			Endpoint: srv.URL + "/", ResourceBase: srv.URL + "/v2.0/"}
		for _, opts := range []NeutronOptions{
			{Mode: ModeAll, NodeID: "node-1", Networks: true},
			{Mode: ModeAll, NodeID: "node-1", Routers: true},
			{Mode: ModeAgents, Networks: true, Routers: true},
		} {
			src, err := NewNeutron(c, opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := src.Networks(t.Context())
			if err == nil || got != nil || !strings.Contains(err.Error(), body.want) {
				t.Errorf("%+v, %s %q: Networks = %v, %v; want nil and an error saying the body %s the list", opts, body.contentType, body.body, got, err, body.want)
			}
		}
	}
}

// TestNeutronAgentListWithoutTheListIsAnError: the same for the one answer of agents mode that is
// not paged, an agent's networks or routers: `{}` there is not "this agent hosts nothing".
func TestNeutronAgentListWithoutTheListIsAnError(t *testing.T) {
	for _, typ := range []string{"DHCP agent", "L3 agent"} {
		mux := http.NewServeMux()
		asJSON := func(h http.HandlerFunc) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				h(w, r)
			}
		}
		mux.HandleFunc("GET /v2.0/agents", asJSON(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, `{"agents": [{"id": "a1", "host": "node-1", "agent_type": %q}]}`, typ)
		}))
		mux.HandleFunc("GET /v2.0/ports", asJSON(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, `{"ports": []}`) }))
		mux.HandleFunc("GET /v2.0/agents/a1/", asJSON(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, `{}`) }))
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		c := &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{HTTPClient: *srv.Client()},
			Endpoint: srv.URL + "/", ResourceBase: srv.URL + "/v2.0/"}
		src, err := NewNeutron(c, NeutronOptions{Mode: ModeAgents, Networks: true, Routers: true})
		if err != nil {
			t.Fatal(err)
		}
		got, err := src.Networks(t.Context())
		if err == nil || got != nil || !strings.Contains(err.Error(), "has no") {
			t.Errorf("%s answering {}: Networks = %v, %v; want nil and an error", typ, got, err)
		}
	}
}

func TestNewNeutronRejects(t *testing.T) {
	c := &gophercloud.ServiceClient{}
	tests := map[string]NeutronOptions{
		"bad mode":         {Mode: "some", Networks: true},
		"all without node": {Mode: ModeAll, Networks: true},
		"nothing selected": {},
	}
	for name, o := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := NewNeutron(c, o); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestParseNetworks(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    Nodes
		wantErr []string
	}{
		"yaml with defaults": {
			in: "nodes:\n  n1:\n    - id: " + netB + "\n    - id: " + netA + "\n      interface: tap1\n    - id: " + routerA + "\n      kind: router\n  n2: []\n",
			want: Nodes{
				"n1": {{Kind: resolve.KindNetwork, ID: netA, NamespacePath: "/var/run/netns/qdhcp-" + netA, Interface: "tap1"}, nw(netB), rt(routerA)},
				"n2": {},
			},
		},
		"json with explicit namespace": {
			in:   `{"nodes": {"n1": [{"id": "` + netA + `", "kind": "network", "namespace": "/run/netns/custom"}]}}`,
			want: Nodes{"n1": {{Kind: resolve.KindNetwork, ID: netA, NamespacePath: "/run/netns/custom"}}},
		},
		"duplicates dropped": {
			in:   "nodes:\n  n1:\n    - id: " + netA + "\n    - id: " + netA + "\n",
			want: Nodes{"n1": {nw(netA)}},
		},
		"every problem reported": {
			in:      "nodes:\n  n1:\n    - id: ../etc\n    - id: " + netA + "\n      kind: switch\n    - id: " + netB + "\n      interface: a/b\n",
			wantErr: []string{`"../etc"`, `"switch"`, `"a/b"`},
		},
		"unknown field": {in: "nodes:\n  n1:\n    - id: " + netA + "\n      nmespace: /x\n", wantErr: []string{"nmespace"}},
		"no nodes":      {in: "networks: []\n", wantErr: []string{"field networks not found"}},
		"empty":         {in: "", wantErr: []string{"no \"nodes\""}},
		"yaml node twice": {
			in:      "nodes:\n  n1:\n    - id: " + netA + "\n  n1:\n    - id: " + netB + "\n",
			wantErr: []string{`"n1" already defined`},
		},
		"json as yaml gives": {
			in: `{"nodes": {"n1": [{"id": "` + netB + `"}, {"id": "` + netA + `", "interface": "tap1"}, {"id": "` + routerA + `", "kind": "router"}], "n2": [], "n3": null}}`,
			want: Nodes{
				"n1": {{Kind: resolve.KindNetwork, ID: netA, NamespacePath: "/var/run/netns/qdhcp-" + netA, Interface: "tap1"}, nw(netB), rt(routerA)},
				"n2": {}, "n3": {},
			},
		},
		"json node twice":          {in: `{"nodes": {"n1": [{"id": "` + netA + `"}], "n1": []}}`, wantErr: []string{`node "n1" given twice`}},
		"json nodes twice":         {in: `{"nodes": {}, "nodes": {}}`, wantErr: []string{`"nodes" given twice`}},
		"json unknown field":       {in: `{"nodes": {"n1": [{"id": "` + netA + `", "nmespace": "/x"}]}}`, wantErr: []string{"nmespace"}},
		"json unknown top field":   {in: `{"nodes": {}, "networks": []}`, wantErr: []string{`"networks"`}},
		"json no nodes":            {in: `{}`, wantErr: []string{"no \"nodes\""}},
		"json nodes not an object": {in: `{"nodes": []}`, wantErr: []string{"want an object"}},
		"json entry not a list":    {in: `{"nodes": {"n1": {"id": "` + netA + `"}}}`, wantErr: []string{"node n1"}},
		"json every problem reported": {
			in:      `{"nodes": {"n1": [{"id": "../etc"}, {"id": "` + netA + `", "kind": "switch"}]}}`,
			wantErr: []string{`"../etc"`, `"switch"`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseNetworks([]byte(tc.in), "")
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("parsed %v, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %s", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("nodes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFileRereadsOnChangeAndKeepsErrorsSeparate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "networks.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := NewFile(path, "/run/netns")
	ctx := context.Background()
	write("nodes:\n  n1:\n    - id: " + netA + "\n")
	got, err := f.Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := Nodes{"n1": {{Kind: resolve.KindNetwork, ID: netA, NamespacePath: "/run/netns/qdhcp-" + netA}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("first read (-want +got):\n%s", diff)
	}
	write("nodes:\n  n1:\n    - id: " + netB + "\n")
	got, err = f.Networks(ctx)
	if err != nil || len(got["n1"]) != 1 || got["n1"][0].ID != netB {
		t.Fatalf("after change: %v, %v; want %s", got, err, netB)
	}
	write("nodes: [broken")
	if got, err := f.Networks(ctx); err == nil {
		t.Fatalf("broken file gave %v, want an error", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Networks(ctx); err == nil {
		t.Fatal("missing file gave no error")
	}
}

// BenchmarkParseNetworks parses the networks file `loadgen xds --nodes 1000 --networks 100` writes
// (100k networks, 4.6 MB of JSON): "json" as ParseNetworks does (encoding/json), "json-as-yaml"
// with the YAML decoder, as it was parsed before, and "yaml" the same document written as YAML.
func BenchmarkParseNetworks(b *testing.B) {
	type entry struct {
		ID string `json:"id" yaml:"id"`
	}
	nodes := map[string][]entry{}
	for i := range 1000 {
		for j := range 100 {
			k := i*101 + j
			nodes[fmt.Sprintf("node-%05d", i)] = append(nodes[fmt.Sprintf("node-%05d", i)], entry{ID: fmt.Sprintf("%08x-0000-4000-8000-%012x", k, k)})
		}
	}
	asJSON, err := json.Marshal(map[string]any{"nodes": nodes})
	if err != nil {
		b.Fatal(err)
	}
	asYAML, err := yaml.Marshal(map[string]any{"nodes": nodes})
	if err != nil {
		b.Fatal(err)
	}
	viaYAML := func(raw []byte) (Nodes, error) {
		doc, err := decodeYAML(raw)
		if err != nil {
			return nil, err
		}
		return checkNetworks(doc, "")
	}
	parse := func(raw []byte) (Nodes, error) { return ParseNetworks(raw, "") }
	for _, tc := range []struct {
		name  string
		raw   []byte
		parse func([]byte) (Nodes, error)
	}{{"json", asJSON, parse}, {"json-as-yaml", asJSON, viaYAML}, {"yaml", asYAML, parse}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.raw)))
			for b.Loop() {
				got, err := tc.parse(tc.raw)
				if err != nil || len(got) != 1000 {
					b.Fatal(len(got), err)
				}
			}
		})
	}
}

// TestNormalize: every node's networks sorted by kind then id, the first of two with the same kind
// and id kept, the source's slices left as they were, and a node without networks kept.
func TestNormalize(t *testing.T) {
	r := func(id, ns string) Network { return Network{Kind: resolve.KindRouter, ID: id, NamespacePath: ns} }
	n := func(id, ns string) Network { return Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: ns} }
	in := Nodes{
		"a":     {r("b", "1"), n("c", "2"), n("a", "3"), n("c", "4"), r("a", "5"), n("a", "6")},
		"empty": nil,
	}
	orig := append([]Network(nil), in["a"]...)
	got := Normalize(in)
	want := Nodes{"a": {n("a", "3"), n("c", "2"), r("a", "5"), r("b", "1")}, "empty": {}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Normalize (-want +got):\n%s", diff)
	}
	if got["empty"] == nil {
		t.Error("a node without networks has none at all, want an empty list")
	}
	if diff := cmp.Diff(orig, in["a"]); diff != "" {
		t.Errorf("Normalize changed its input (-before +after):\n%s", diff)
	}
}
