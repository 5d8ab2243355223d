package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gophercloud/gophercloud/v2"
	th "github.com/gophercloud/gophercloud/v2/testhelper"
	thclient "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/metaproxy/metaproxy/pkg/cause"
)

const (
	netA    = "6f1e0c8a-2b4d-4e3f-9a5b-000000000a0a"
	netB    = "6f1e0c8a-2b4d-4e3f-9a5b-000000000b0b"
	routerR = "3c9d7e21-5a6b-4c8d-8e9f-0000000000ff"
)

// neutronCall is one request the resolver must send to the fake Neutron, and its answer.
type neutronCall struct {
	query       url.Values // the exact query expected
	status      int        // 0 means 200
	contentType string     // "" means application/json
	body        string     // "{{URL}}" is replaced by the server's URL
}

// fakeNeutron is an HTTP server speaking Neutron's GET /v2.0/ports, gophercloud testhelper style:
// it asserts each request in order and answers the matching fixture.
type fakeNeutron struct {
	t      testing.TB
	server th.FakeServer
	mu     sync.Mutex
	calls  []neutronCall
	served int
}

func newFakeNeutron(t testing.TB, calls ...neutronCall) *fakeNeutron {
	t.Helper()
	f := &fakeNeutron{t: t, server: th.SetupHTTP(), calls: calls}
	f.server.Mux.HandleFunc("/v2.0/ports", f.serve)
	t.Cleanup(f.server.Teardown)
	return f
}

func (f *fakeNeutron) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		f.t.Errorf("method = %s, want GET", r.Method)
	}
	if got := r.Header.Get("X-Auth-Token"); got != thclient.TokenID {
		f.t.Errorf("X-Auth-Token = %q, want %q", got, thclient.TokenID)
	}
	f.mu.Lock()
	i := f.served
	f.served++
	f.mu.Unlock()
	if i >= len(f.calls) {
		f.t.Errorf("unexpected request %d: %s", i+1, r.URL.RawQuery)
		w.WriteHeader(http.StatusTeapot)
		return
	}
	c := f.calls[i]
	if diff := cmp.Diff(c.query, r.URL.Query()); diff != "" {
		f.t.Errorf("request %d query mismatch (-want +got):\n%s", i+1, diff)
	}
	w.Header().Set("Content-Type", cmpOr(c.contentType, "application/json"))
	w.WriteHeader(cmpOr(c.status, http.StatusOK))
	fmt.Fprint(w, strings.ReplaceAll(c.body, "{{URL}}", f.server.Server.URL))
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// requests returns how many requests were served.
func (f *fakeNeutron) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.served
}

// client returns a network service client pointing at the fake, as gophercloud's NewNetworkV2 does.
func (f *fakeNeutron) client() *gophercloud.ServiceClient {
	c := thclient.ServiceClient(f.server)
	c.ResourceBase = f.server.Endpoint() + "v2.0/"
	return c
}

func instanceQuery(networks []string, filter, value string) url.Values {
	v := url.Values{
		"network_id": networks,
		"fields":     {"id", "device_id", "project_id", "tenant_id", "network_id"},
	}
	v.Set(filter, value)
	return v
}

func routerQuery(router string) url.Values {
	return url.Values{
		"device_id":    {router},
		"device_owner": {"network:router_interface", "network:ha_router_replicated_interface", "network:router_interface_distributed"},
		"fields":       {"network_id"},
	}
}

func portJSON(id, device, project, tenant, network string) string {
	return fmt.Sprintf(`{"id":%q,"device_id":%q,"project_id":%q,"tenant_id":%q,"network_id":%q}`, id, device, project, tenant, network)
}

func portsJSON(ps ...string) string {
	return `{"ports":[` + strings.Join(ps, ",") + `]}`
}

func TestNeutronResolve(t *testing.T) {
	onA := func(filter, value string) url.Values { return instanceQuery([]string{netA}, filter, value) }
	vm1 := portJSON("port-1", "vm-1", "proj-1", "proj-1", netA)
	tests := map[string]struct {
		query         Query
		calls         []neutronCall
		want          Instance
		wantErr       error    // errors.Is target; nil means success unless wantAmbiguous
		wantAmbiguous []string // port ids of the expected *AmbiguousError
		wantMsg       string   // substring of the error message
		wantCause     cause.Cause
	}{
		"network mode one port": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls: []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), body: portsJSON(vm1)}},
			want:  Instance{InstanceID: "vm-1", ProjectID: "proj-1", PortID: "port-1", NetworkID: netA},
		},
		"project_id missing falls back to tenant_id": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls: []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"),
				body: `{"ports":[{"id":"port-1","device_id":"vm-1","tenant_id":"old-tenant","network_id":"` + netA + `"}]}`}},
			want: Instance{InstanceID: "vm-1", ProjectID: "old-tenant", PortID: "port-1", NetworkID: netA},
		},
		"network mode no port": {
			query:   Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.9")},
			calls:   []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.9"), body: `{"ports":[]}`}},
			wantErr: ErrNotFound,
			wantMsg: "10.0.0.9 on network " + netA,
		},
		"network mode two ports are ambiguous, ids sorted": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls: []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"),
				body: portsJSON(portJSON("port-z", "vm-z", "p", "p", netA), portJSON("port-a", "vm-a", "p", "p", netA))}},
			wantAmbiguous: []string{"port-a", "port-z"},
		},
		"port without device_id is not an instance": {
			query:   Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.7")},
			calls:   []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.7"), body: portsJSON(portJSON("port-free", "", "p", "p", netA))}},
			wantErr: ErrNotFound,
			wantMsg: "port port-free is not bound to an instance",
		},
		"ipv4-mapped source is asked as ipv4": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("::ffff:10.0.0.5")},
			calls: []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), body: portsJSON(vm1)}},
			want:  Instance{InstanceID: "vm-1", ProjectID: "proj-1", PortID: "port-1", NetworkID: netA},
		},
		"global ipv6 is a fixed ip": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("2001:db8::5")},
			calls: []neutronCall{{query: onA("fixed_ips", "ip_address=2001:db8::5"), body: portsJSON(vm1)}},
			want:  Instance{InstanceID: "vm-1", ProjectID: "proj-1", PortID: "port-1", NetworkID: netA},
		},
		"link-local ipv6 is matched by mac": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("fe80::f816:3eff:fe00:a05")},
			calls: []neutronCall{{query: onA("mac_address", "fa:16:3e:00:0a:05"), body: portsJSON(vm1)}},
			want:  Instance{InstanceID: "vm-1", ProjectID: "proj-1", PortID: "port-1", NetworkID: netA},
		},
		"link-local without EUI-64 asks nothing": {
			query:   Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("fe80::9c3a:51d2:7b4e:10af")},
			wantErr: ErrNotFound,
			wantMsg: "not EUI-64",
		},
		"router mode: interfaces on two networks, vm on the second": {
			query: Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr("10.0.1.7")},
			calls: []neutronCall{
				// Two interfaces on netB (v4 and v6 subnets) and one on netA, unsorted.
				{query: routerQuery(routerR), body: `{"ports":[{"network_id":"` + netB + `"},{"network_id":"` + netA + `"},{"network_id":"` + netB + `"}]}`},
				{query: instanceQuery([]string{netA, netB}, "fixed_ips", "ip_address=10.0.1.7"), body: portsJSON(portJSON("port-b", "vm-b", "proj-b", "proj-b", netB))},
			},
			want: Instance{InstanceID: "vm-b", ProjectID: "proj-b", PortID: "port-b", NetworkID: netB},
		},
		"router mode link-local by mac": {
			query: Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr("fe80::f816:3eff:fe00:b05")},
			calls: []neutronCall{
				{query: routerQuery(routerR), body: `{"ports":[{"network_id":"` + netA + `"},{"network_id":"` + netB + `"}]}`},
				{query: instanceQuery([]string{netA, netB}, "mac_address", "fa:16:3e:00:0b:05"), body: portsJSON(portJSON("port-b", "vm-b", "proj-b", "proj-b", netB))},
			},
			want: Instance{InstanceID: "vm-b", ProjectID: "proj-b", PortID: "port-b", NetworkID: netB},
		},
		"router mode same address on two networks is ambiguous": {
			query: Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls: []neutronCall{
				{query: routerQuery(routerR), body: `{"ports":[{"network_id":"` + netA + `"},{"network_id":"` + netB + `"}]}`},
				{query: instanceQuery([]string{netA, netB}, "fixed_ips", "ip_address=10.0.0.5"),
					body: portsJSON(vm1, portJSON("port-b", "vm-b", "proj-b", "proj-b", netB))},
			},
			wantAmbiguous: []string{"port-1", "port-b"},
		},
		"router without interfaces never searches all networks": {
			query:   Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:   []neutronCall{{query: routerQuery(routerR), body: `{"ports":[]}`}},
			wantErr: ErrNotFound,
			wantMsg: "no interface ports",
		},
		"router interface lookup fails": {
			query:   Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:   []neutronCall{{query: routerQuery(routerR), status: http.StatusInternalServerError, body: `{}`}},
			wantErr: ErrUnavailable,
			wantMsg: "HTTP 500",
		},
		"router port lookup fails": {
			query: Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls: []neutronCall{
				{query: routerQuery(routerR), body: `{"ports":[{"network_id":"` + netA + `"}]}`},
				{query: onA("fixed_ips", "ip_address=10.0.0.5"), status: http.StatusServiceUnavailable, body: `{}`},
			},
			wantErr: ErrUnavailable,
			wantMsg: "HTTP 503",
		},
		"port of a network not asked for is refused": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), body: portsJSON(portJSON("port-b", "vm-b", "p", "p", netB))}},
			wantErr:   ErrUnavailable,
			wantMsg:   "not asked for",
			wantCause: cause.BadResponse,
		},
		"pages are followed": {
			query: Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls: []neutronCall{
				{query: onA("fixed_ips", "ip_address=10.0.0.5"),
					body: `{"ports":[` + vm1 + `],"ports_links":[{"rel":"next","href":"{{URL}}/v2.0/ports?marker=port-1&page=2"}]}`},
				{query: url.Values{"marker": {"port-1"}, "page": {"2"}}, body: portsJSON(portJSON("port-2", "vm-2", "p", "p", netA))},
			},
			wantAmbiguous: []string{"port-1", "port-2"},
		},
		"500": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), status: http.StatusInternalServerError, body: `{"NeutronError":{"type":"X","message":"db gone","detail":""}}`}},
			wantErr:   ErrUnavailable,
			wantMsg:   "HTTP 500: db gone",
			wantCause: cause.ServerError,
		},
		"503": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), status: http.StatusServiceUnavailable, contentType: "text/html", body: "<html>busy</html>"}},
			wantErr:   ErrUnavailable,
			wantMsg:   "HTTP 503",
			wantCause: cause.ServerError,
		},
		"401 points at the credentials": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), status: http.StatusUnauthorized, body: `{"error":{"code":401}}`}},
			wantErr:   ErrUnavailable,
			wantMsg:   "Neutron refused the credentials (HTTP 401)",
			wantCause: cause.Credentials,
		},
		"403 points at the credentials": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), status: http.StatusForbidden, body: `{}`}},
			wantErr:   ErrUnavailable,
			wantMsg:   "refused by Neutron's policy (HTTP 403)",
			wantCause: cause.Forbidden,
		},
		"malformed JSON": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), body: `{"ports":[{"id":`}},
			wantErr:   ErrUnavailable,
			wantCause: cause.BadResponse,
		},
		"200 that is not JSON": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), contentType: "text/html", body: "<html>login</html>"}},
			wantErr:   ErrUnavailable,
			wantMsg:   "not a JSON object",
			wantCause: cause.BadResponse,
		},
		"200 without a ports list": {
			query:     Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
			calls:     []neutronCall{{query: onA("fixed_ips", "ip_address=10.0.0.5"), body: `{}`}},
			wantErr:   ErrUnavailable,
			wantMsg:   `no "ports" list`,
			wantCause: cause.BadResponse,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFakeNeutron(t, tc.calls...)
			got, err := NewNeutron(FixedClient{f.client()}, NeutronOptions{}).Resolve(context.Background(), tc.query)
			if n := f.requests(); n != len(tc.calls) {
				t.Errorf("Neutron saw %d requests, want %d", n, len(tc.calls))
			}
			checkResolve(t, got, err, tc.want, tc.wantErr, tc.wantAmbiguous, tc.wantMsg)
			if c, _ := cause.Of(err); tc.wantCause != "" && c != tc.wantCause {
				t.Errorf("cause %q, want %q (%v)", c, tc.wantCause, err)
			}
		})
	}
}

// TestNeutronRouterNetworksAreReused: behind one router, each VM costs one port lookup; the
// router's networks are listed once per TTL, and again when a lookup finds nothing with a list
// older than a second (a network attached since), but not for every unknown address.
func TestNeutronRouterNetworksAreReused(t *testing.T) {
	ip := func(a string) url.Values { return instanceQuery([]string{netA}, "fixed_ips", "ip_address="+a) }
	ipAB := func(a string) url.Values { return instanceQuery([]string{netA, netB}, "fixed_ips", "ip_address="+a) }
	onlyA := `{"ports":[{"network_id":"` + netA + `"}]}`
	both := `{"ports":[{"network_id":"` + netA + `"},{"network_id":"` + netB + `"}]}`
	vm := func(n int, network string) string {
		return portsJSON(portJSON(fmt.Sprintf("port-%d", n), fmt.Sprintf("vm-%d", n), "p", "p", network))
	}
	f := newFakeNeutron(t,
		neutronCall{query: routerQuery(routerR), body: onlyA},
		neutronCall{query: ip("10.0.0.5"), body: vm(1, netA)},
		neutronCall{query: ip("10.0.0.6"), body: vm(2, netA)}, // list reused
		// 2s later: 10.0.1.7 is on netB, attached since the list was made.
		neutronCall{query: ip("10.0.1.7"), body: portsJSON()},
		neutronCall{query: routerQuery(routerR), body: both},
		neutronCall{query: ipAB("10.0.1.7"), body: vm(3, netB)},
		// An unknown address right after: the list is younger than a second, not listed again.
		neutronCall{query: ipAB("10.0.9.9"), body: portsJSON()},
		// 11s later the list has expired.
		neutronCall{query: routerQuery(routerR), body: both},
		neutronCall{query: ipAB("10.0.0.5"), body: vm(1, netA)},
	)
	n := NewNeutron(FixedClient{f.client()}, NeutronOptions{RouterNetworksTTL: 10 * time.Second})
	clk := time.Unix(1000, 0)
	n.routers.now = func() time.Time { return clk }
	resolve := func(addr string) (Instance, error) {
		return n.Resolve(context.Background(), Query{Scope: Scope{Kind: KindRouter, ID: routerR}, Addr: netip.MustParseAddr(addr)})
	}
	for _, step := range []struct {
		advance time.Duration
		addr    string
		want    string // instance id; "" means not found
	}{
		{0, "10.0.0.5", "vm-1"},
		{0, "10.0.0.6", "vm-2"},
		{2 * time.Second, "10.0.1.7", "vm-3"},
		{0, "10.0.9.9", ""},
		{11 * time.Second, "10.0.0.5", "vm-1"},
	} {
		clk = clk.Add(step.advance)
		inst, err := resolve(step.addr)
		switch {
		case step.want == "" && !errors.Is(err, ErrNotFound):
			t.Fatalf("%s: %+v, %v; want not found", step.addr, inst, err)
		case step.want != "" && (err != nil || inst.InstanceID != step.want):
			t.Fatalf("%s: %+v, %v; want %s", step.addr, inst, err, step.want)
		}
	}
	if got := f.requests(); got != 9 {
		t.Errorf("Neutron saw %d requests, want 9", got)
	}
}

// checkResolve asserts one Resolve outcome.
func checkResolve(t *testing.T, got Instance, err error, want Instance, wantErr error, wantAmbiguous []string, wantMsg string) {
	t.Helper()
	switch {
	case wantAmbiguous != nil:
		var amb *AmbiguousError
		if !errors.As(err, &amb) {
			t.Fatalf("err = %v, want *AmbiguousError", err)
		}
		if diff := cmp.Diff(wantAmbiguous, amb.PortIDs); diff != "" {
			t.Errorf("ambiguous port ids (-want +got):\n%s", diff)
		}
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnavailable) {
			t.Errorf("ambiguous err %v also matches another sentinel", err)
		}
	case wantErr != nil:
		if !errors.Is(err, wantErr) {
			t.Fatalf("err = %v, want errors.Is %v", err, wantErr)
		}
		for _, other := range []error{ErrNotFound, ErrUnavailable} {
			if other != wantErr && errors.Is(err, other) {
				t.Errorf("err %v also matches %v", err, other)
			}
		}
	default:
		if err != nil {
			t.Fatalf("Resolve: %v", err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("instance (-want +got):\n%s", diff)
		}
	}
	if err != nil && (got != Instance{}) {
		t.Errorf("instance %+v returned with error %v", got, err)
	}
	if wantMsg != "" && (err == nil || !strings.Contains(err.Error(), wantMsg)) {
		t.Errorf("err = %v, want it to contain %q", err, wantMsg)
	}
}

func TestNeutronTimeout(t *testing.T) {
	release := make(chan struct{})
	f := newFakeNeutron(t)
	f.server.Mux.HandleFunc("/v2.0/slow/ports", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	c := f.client()
	c.ResourceBase = f.server.Endpoint() + "v2.0/slow/"

	_, err := NewNeutron(FixedClient{c}, NeutronOptions{Timeout: 50 * time.Millisecond}).Resolve(context.Background(),
		Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "did not answer within 50ms") {
		t.Errorf("err = %v, want it to name the timeout", err)
	}
	if c, _ := cause.Of(err); c != cause.Timeout {
		t.Errorf("cause %q, want timeout", c)
	}
}

func TestNeutronDefaultTimeout(t *testing.T) {
	if got := NewNeutron(FixedClient{}, NeutronOptions{}).timeout; got != DefaultNeutronTimeout {
		t.Errorf("default timeout = %s, want %s", got, DefaultNeutronTimeout)
	}
	if got := NewNeutron(FixedClient{}, NeutronOptions{Timeout: time.Second}).timeout; got != time.Second {
		t.Errorf("timeout = %s, want 1s", got)
	}
}

func TestNeutronConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := &gophercloud.ServiceClient{
		ProviderClient: &gophercloud.ProviderClient{TokenID: thclient.TokenID},
		Endpoint:       "http://" + addr + "/",
		ResourceBase:   "http://" + addr + "/v2.0/",
	}
	_, err = NewNeutron(FixedClient{c}, NeutronOptions{}).Resolve(context.Background(),
		Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("err = %v, want the dial error kept in the chain", err)
	}
	if c, _ := cause.Of(err); c != cause.Unreachable {
		t.Errorf("cause %q, want unreachable", c)
	}
}

func TestNeutronCallerCanceled(t *testing.T) {
	q := Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")}
	t.Run("before the call", func(t *testing.T) {
		f := newFakeNeutron(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := NewNeutron(FixedClient{f.client()}, NeutronOptions{}).Resolve(ctx, q)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want context.Canceled and ErrUnavailable", err)
		}
		if n := f.requests(); n != 0 {
			t.Errorf("Neutron saw %d requests, want 0", n)
		}
	})
	t.Run("during the call", func(t *testing.T) {
		f := newFakeNeutron(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f.server.Mux.HandleFunc("/v2.0/hang/ports", func(w http.ResponseWriter, r *http.Request) {
			cancel() // the VM went away while Neutron was thinking
			<-r.Context().Done()
		})
		c := f.client()
		c.ResourceBase = f.server.Endpoint() + "v2.0/hang/"
		_, err := NewNeutron(FixedClient{c}, NeutronOptions{Timeout: time.Minute}).Resolve(ctx, q)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want context.Canceled and ErrUnavailable", err)
		}
		if !strings.Contains(err.Error(), "caller gave up") {
			t.Errorf("err = %v, want it to say the caller gave up", err)
		}
	})
}

func TestNeutronInvalidQuery(t *testing.T) {
	tests := map[string]Query{
		"no address":   {Scope: Scope{Kind: KindNetwork, ID: netA}},
		"no scope id":  {Scope: Scope{Kind: KindNetwork}, Addr: netip.MustParseAddr("10.0.0.5")},
		"unknown kind": {Scope: Scope{ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")},
	}
	for name, q := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFakeNeutron(t)
			_, err := NewNeutron(FixedClient{f.client()}, NeutronOptions{}).Resolve(context.Background(), q)
			if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want a plain invalid-query error", err)
			}
			if n := f.requests(); n != 0 {
				t.Errorf("Neutron saw %d requests, want 0", n)
			}
		})
	}
}

func TestPortQuery(t *testing.T) {
	// Router mode repeats network_id and device_owner, which gophercloud's ListOpts cannot.
	got, err := portQuery{
		networkIDs: []string{"a", "b"}, deviceID: "r", deviceOwners: []string{"o1", "o2"},
		ipAddress: "fd00::5", fields: []string{"id", "network_id"},
	}.ToPortListQuery()
	if err != nil {
		t.Fatal(err)
	}
	want := "?device_id=r&device_owner=o1&device_owner=o2&fields=id&fields=network_id&fixed_ips=ip_address%3Dfd00%3A%3A5&network_id=a&network_id=b"
	if got != want {
		t.Errorf("query = %s\nwant    %s", got, want)
	}
}

func BenchmarkNeutronResolve(b *testing.B) {
	body := portsJSON(portJSON("port-1", "vm-1", "proj-1", "proj-1", netA))
	f := newFakeNeutron(b)
	f.server.Mux.HandleFunc("/v2.0/bench/ports", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	})
	c := f.client()
	c.ResourceBase = f.server.Endpoint() + "v2.0/bench/"
	n := NewNeutron(FixedClient{c}, NeutronOptions{})
	q := Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := n.Resolve(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
}
