package ovnports_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/gophercloud/gophercloud/v2"

	"github.com/metaproxy/metaproxy/pkg/ovnports"
)

// fakeNeutron answers GET /v2.0/<resource> with handler's body and records every query.
type fakeNeutron struct {
	mu      sync.Mutex
	queries []string
}

func serve(t *testing.T, handler func(w http.ResponseWriter, r *http.Request)) (*ovnports.Client, *fakeNeutron) {
	t.Helper()
	f := &fakeNeutron{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.queries = append(f.queries, r.URL.Path+"?"+r.URL.RawQuery)
		f.mu.Unlock()
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	sc := &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{HTTPClient: *srv.Client()},
		Endpoint: srv.URL + "/", ResourceBase: srv.URL + "/v2.0/", Type: "network"}
	return ovnports.New(sc), f
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func TestVMNetworks(t *testing.T) {
	c, f := serve(t, func(w http.ResponseWriter, r *http.Request) {
		page2 := r.URL.Query().Get("marker") == "p2"
		body := map[string]any{}
		if !page2 {
			body["ports"] = []map[string]any{
				{"network_id": "net-b", "device_owner": "compute:nova", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
				{"network_id": "net-dhcp", "device_owner": "network:dhcp", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
				{"network_id": "net-router", "device_owner": "network:router_interface", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
				{"network_id": "net-failed", "device_owner": "compute:nova", "binding:host_id": "compute-1", "binding:vif_type": "binding_failed"},
			}
			body["ports_links"] = []map[string]string{{"rel": "next", "href": "http://" + r.Host + r.URL.Path + "?" + r.URL.RawQuery + "&marker=p2"}}
		} else {
			body["ports"] = []map[string]any{
				{"network_id": "net-a", "device_owner": "compute:az1", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
				{"network_id": "net-b", "device_owner": "", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
			}
		}
		writeJSON(w, body)
	})
	got, err := c.VMNetworks(context.Background(), "compute-1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"net-a", "net-b"}, got); diff != "" {
		t.Errorf("networks (-want +got):\n%s", diff)
	}
	q := f.queries[0]
	for _, want := range []string{"binding%3Ahost_id=compute-1", "fields=network_id", "fields=device_owner", "fields=binding%3Ahost_id", "fields=binding%3Avif_type"} {
		if !strings.Contains(q, want) {
			t.Errorf("query %s lacks %s", q, want)
		}
	}
	if len(f.queries) != 2 {
		t.Errorf("%d requests, want 2 (two pages)", len(f.queries))
	}
}

func TestVMNetworksByHost(t *testing.T) {
	c, _ := serve(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"ports": []map[string]any{
			{"network_id": "net-a", "device_owner": "compute:nova", "binding:host_id": "compute-2", "binding:vif_type": "ovs"},
			{"network_id": "net-b", "device_owner": "compute:nova", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
			{"network_id": "net-a", "device_owner": "compute:nova", "binding:host_id": "compute-1", "binding:vif_type": "ovs"},
			{"network_id": "net-c", "device_owner": "compute:nova", "binding:host_id": "", "binding:vif_type": "unbound"},
		}})
	})
	got, err := c.VMNetworksByHost(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"compute-1": {"net-a", "net-b"}, "compute-2": {"net-a"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestNeutronAnswersThatAreNotListsAreErrors(t *testing.T) {
	for name, h := range map[string]func(w http.ResponseWriter, r *http.Request){
		"empty object": func(w http.ResponseWriter, r *http.Request) { writeJSON(w, map[string]any{}) },
		"html":         func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>proxy error</html>")) },
		"500":          func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) },
		"401":          func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusUnauthorized) },
		"other host": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, map[string]any{"ports": []map[string]any{{"network_id": "n", "device_owner": "compute:nova", "binding:host_id": "compute-9"}}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := serve(t, h)
			if nets, err := c.VMNetworks(context.Background(), "compute-1"); err == nil {
				t.Errorf("no error, networks %v", nets)
			}
			if _, err := c.MetadataPorts(context.Background(), []string{"n"}); err == nil && name != "other host" {
				t.Error("MetadataPorts: no error")
			}
		})
	}
}

func TestMetadataPortsAndAddresses(t *testing.T) {
	var nets []string
	for i := range 150 {
		nets = append(nets, fmt.Sprintf("net-%03d", i))
	}
	c, f := serve(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch r.URL.Path {
		case "/v2.0/ports":
			if q.Get("device_owner") != ovnports.MetadataOwner {
				http.Error(w, "unexpected", 400)
				return
			}
			var ps []map[string]any
			for _, n := range q["network_id"] {
				switch n {
				case "net-000":
					ps = append(ps,
						map[string]any{"id": "mp-b", "network_id": n, "mac_address": "fa:16:3e:00:00:0b", "fixed_ips": []map[string]string{{"ip_address": "10.0.0.3", "subnet_id": "s0"}}},
						map[string]any{"id": "mp-a", "network_id": n, "mac_address": "fa:16:3e:00:00:0a", "fixed_ips": []map[string]string{
							{"ip_address": "10.0.0.2", "subnet_id": "s0"}, {"ip_address": "fd00::2", "subnet_id": "s6"}, {"ip_address": "10.9.0.2", "subnet_id": "s9"}}})
				case "net-149":
					ps = append(ps, map[string]any{"id": "mp-149", "network_id": n, "mac_address": "fa:16:3e:00:01:49", "fixed_ips": []map[string]string{}})
				}
			}
			writeJSON(w, map[string]any{"ports": ps})
		case "/v2.0/subnets":
			writeJSON(w, map[string]any{"subnets": []map[string]any{
				{"id": "s0", "network_id": "net-000", "cidr": "10.0.0.0/24"}, {"id": "s6", "network_id": "net-000", "cidr": "fd00::/64"}}})
		}
	})
	ctx := context.Background()
	mps, err := c.MetadataPorts(ctx, nets)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.queries) != 2 {
		t.Errorf("%d requests for 150 networks, want 2", len(f.queries))
	}
	if len(mps) != 2 {
		t.Fatalf("%d metadata ports, want 2: %+v", len(mps), mps)
	}
	mp := mps["net-000"]
	if mp.ID != "mp-a" || mp.MAC.String() != "fa:16:3e:00:00:0a" {
		t.Errorf("net-000: %+v, want mp-a (the lowest id)", mp)
	}
	prefixes, err := c.SubnetPrefixes(ctx, []string{"net-000"})
	if err != nil {
		t.Fatal(err)
	}
	// The IPv6 address is not the agent's business, and 10.9.0.2's subnet is unknown.
	if diff := cmp.Diff([]netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}, mp.Addresses(prefixes), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if got := mps["net-149"]; got.ID != "mp-149" || len(got.IPv4) != 0 {
		t.Errorf("net-149: %+v", got)
	}
}

func TestMetadataPortRefusesBadData(t *testing.T) {
	for name, port := range map[string]map[string]any{
		"bad mac":       {"id": "p", "network_id": "n", "mac_address": "nope"},
		"bad ip":        {"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": []map[string]string{{"ip_address": "10.0.0.300"}}},
		"other network": {"id": "p", "network_id": "m", "mac_address": "fa:16:3e:00:00:01"},
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := serve(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, map[string]any{"ports": []any{port}}) })
			if mps, err := c.MetadataPorts(context.Background(), []string{"n"}); err == nil {
				t.Errorf("accepted: %+v", mps)
			}
		})
	}
}

func TestHostHasChassis(t *testing.T) {
	c, f := serve(t, func(w http.ResponseWriter, r *http.Request) {
		as := []map[string]string{}
		if h := r.URL.Query().Get("host"); h == "compute-1" {
			as = append(as, map[string]string{"host": h})
		}
		writeJSON(w, map[string]any{"agents": as})
	})
	ctx := context.Background()
	if ok, err := c.HostHasChassis(ctx, "compute-1"); err != nil || !ok {
		t.Errorf("compute-1: %v, %v", ok, err)
	}
	if ok, err := c.HostHasChassis(ctx, "compute-2"); err != nil || ok {
		t.Errorf("compute-2: %v, %v", ok, err)
	}
	if !strings.Contains(f.queries[0], "binary=ovn-controller") {
		t.Errorf("query %s", f.queries[0])
	}
}
