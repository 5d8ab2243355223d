package source

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/gophercloud/gophercloud/v2"

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

// fakeNeutron answers the Neutron API calls the source makes, like neutron-server does.
func fakeNeutron(t *testing.T, fail *atomic.Bool) *gophercloud.ServiceClient {
	t.Helper()
	reply := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(v); err != nil {
			t.Error(err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2.0/agents", func(w http.ResponseWriter, r *http.Request) {
		if fail != nil && fail.Load() {
			http.Error(w, `{"NeutronError": {"message": "unavailable"}}`, http.StatusServiceUnavailable)
			return
		}
		var agents []map[string]any
		switch r.URL.Query().Get("agent_type") {
		case "DHCP agent":
			agents = []map[string]any{
				{"id": "dhcp-1", "agent_type": "DHCP agent", "host": "compute-1", "alive": true},
				{"id": "dhcp-2", "agent_type": "DHCP agent", "host": "compute-2", "alive": false},
				{"id": "dhcp-3", "agent_type": "DHCP agent", "host": "compute-3", "alive": true},
			}
		case "L3 agent":
			agents = []map[string]any{{"id": "l3-1", "agent_type": "L3 agent", "host": "compute-1", "alive": true}}
		default:
			t.Errorf("unexpected agent_type filter %q", r.URL.Query().Get("agent_type"))
		}
		reply(w, map[string]any{"agents": agents})
	})
	dhcp := map[string][]string{"dhcp-1": {netB, netA}, "dhcp-2": {netA}, "dhcp-3": {}}
	for agent, ids := range dhcp {
		mux.HandleFunc("GET /v2.0/agents/"+agent+"/dhcp-networks", func(w http.ResponseWriter, r *http.Request) {
			nets := []map[string]any{}
			for _, id := range ids {
				nets = append(nets, map[string]any{"id": id, "name": "net-" + id[:4]})
			}
			reply(w, map[string]any{"networks": nets})
		})
	}
	mux.HandleFunc("GET /v2.0/agents/l3-1/l3-routers", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{"routers": []map[string]any{{"id": routerA, "name": "r1"}}})
	})
	mux.HandleFunc("GET /v2.0/subnets", func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.Query().Get("enable_dhcp"); got != "true" {
			t.Errorf("subnets listed with enable_dhcp=%q, want true", got)
		}
		reply(w, map[string]any{"subnets": []map[string]any{
			{"id": "s1", "network_id": netA, "enable_dhcp": true},
			{"id": "s2", "network_id": netA, "enable_dhcp": true},
			{"id": "s3", "network_id": netB, "enable_dhcp": true},
		}})
	})
	mux.HandleFunc("GET /v2.0/routers", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{"routers": []map[string]any{{"id": routerA}}})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &gophercloud.ServiceClient{
		ProviderClient: &gophercloud.ProviderClient{HTTPClient: *srv.Client()},
		Endpoint:       srv.URL + "/",
		ResourceBase:   srv.URL + "/v2.0/",
	}
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
