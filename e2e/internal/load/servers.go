package load

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// upstreamBody is what the trivial upstream answers: about the size of a small meta_data.json.
var upstreamBody = []byte(`{"uuid": "0a1b2c3d-0000-4000-8000-000000000001", "hostname": "vm.novalocal", "name": "vm", ` +
	`"launch_index": 0, "availability_zone": "nova", "project_id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9", ` +
	`"meta": {}, "public_keys": {}, "keys": [], "devices": [], "dedicated_cpus": []}`)

// Upstream is the trivial fast upstream put in place of nova to expose the proxies' own overhead:
// every request gets 200 and the same small JSON body. It counts requests that carry the signed
// headers nova would require, so a chain that forgot them shows up.
type Upstream struct {
	Signed, Unsigned atomic.Int64
}

// ServeHTTP implements http.Handler.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Instance-ID-Signature") != "" && r.Header.Get("X-Instance-ID") != "" {
		u.Signed.Add(1)
	} else {
		u.Unsigned.Add(1)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Write(upstreamBody)
}

// PortLookupMetric is the counter NeutronCounter serves at CounterPath.
const PortLookupMetric = "metaproxy_bench_neutron_port_lookups_total"

// CounterPath is where NeutronCounter serves its counter (a path Neutron does not have).
const CounterPath = "/-/bench/metrics"

// NeutronCounter is a reverse proxy in front of neutron-server that counts port lookups
// (GET .../v2.0/ports) and serves the count in Prometheus text format at CounterPath.
type NeutronCounter struct {
	proxy   *httputil.ReverseProxy
	lookups atomic.Int64
	other   atomic.Int64
}

// NewNeutronCounter proxies to upstream (like http://127.0.0.1:9696/).
func NewNeutronCounter(upstream string) (*NeutronCounter, error) {
	u, err := url.Parse(upstream)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("neutron counter: upstream %q: want http://HOST:PORT/", upstream)
	}
	return &NeutronCounter{proxy: httputil.NewSingleHostReverseProxy(u)}, nil
}

// Lookups is the number of port lookups proxied so far.
func (n *NeutronCounter) Lookups() int64 { return n.lookups.Load() }

// ServeHTTP implements http.Handler.
func (n *NeutronCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == CounterPath {
		fmt.Fprintf(w, "# TYPE %s counter\n%s %d\n", PortLookupMetric, PortLookupMetric, n.lookups.Load())
		fmt.Fprintf(w, "# TYPE metaproxy_bench_neutron_other_requests_total counter\nmetaproxy_bench_neutron_other_requests_total %d\n", n.other.Load())
		return
	}
	if r.Method == http.MethodGet && strings.HasSuffix(strings.TrimSuffix(r.URL.Path, "/"), "/v2.0/ports") {
		n.lookups.Add(1)
	} else {
		n.other.Add(1)
	}
	n.proxy.ServeHTTP(w, r)
}

// ServeHTTPOn serves h on l until ctx is done.
func ServeHTTPOn(ctx context.Context, l net.Listener, h http.Handler) error {
	s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}
}

// portsDoc is the body of Neutron's GET /v2.0/ports, as pkg/resolve reads it.
type portsDoc struct {
	Ports []port `json:"ports"`
}

type port struct {
	ID          string    `json:"id"`
	NetworkID   string    `json:"network_id"`
	DeviceID    string    `json:"device_id"`
	DeviceOwner string    `json:"device_owner"`
	ProjectID   string    `json:"project_id"`
	TenantID    string    `json:"tenant_id"`
	MAC         string    `json:"mac_address"`
	FixedIPs    []fixedIP `json:"fixed_ips"`
}

type fixedIP struct {
	SubnetID  string `json:"subnet_id"`
	IPAddress string `json:"ip_address"`
}

// GenNetworkID is the id of generated network i: a version 4 UUID as Neutron makes them, every
// digit random-looking (a hash of i), so that the listeners of two networks differ where real
// ones do (ids with mostly equal digits made cmd/xds's listeners look more alike than they are).
func GenNetworkID(i int) string {
	h := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
	h[6] = h[6]&0x0f | 0x40 // version 4
	h[8] = h[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// WritePorts writes a ports document with n VM ports spread evenly over networks networks, and
// returns the targets (network, address) in the order written. VM j of network i has address
// 10.(j/65536).((j/256)%256).(j%256) + 1 on its own network (networks overlap, as tenants' do).
func WritePorts(w io.Writer, n, networks int) ([]Target, error) {
	if n <= 0 || networks <= 0 {
		return nil, errors.New("ports: want positive counts")
	}
	doc := portsDoc{Ports: make([]port, 0, n)}
	targets := make([]Target, 0, n)
	for k := range n {
		i, j := k%networks, k/networks
		ip := fmt.Sprintf("10.%d.%d.%d", (j+1)/65536, ((j+1)/256)%256, (j+1)%256)
		net := GenNetworkID(i)
		doc.Ports = append(doc.Ports, port{
			ID:          fmt.Sprintf("%08x-1111-4000-8000-%012x", k, k),
			NetworkID:   net,
			DeviceID:    fmt.Sprintf("%08x-2222-4000-8000-%012x", k, k),
			DeviceOwner: "compute:nova",
			ProjectID:   "0a1b2c3d4e5f40718293a4b5c6d7e8f9",
			TenantID:    "0a1b2c3d4e5f40718293a4b5c6d7e8f9",
			MAC:         fmt.Sprintf("fa:16:3e:%02x:%02x:%02x", (k>>16)&0xff, (k>>8)&0xff, k&0xff),
			FixedIPs:    []fixedIP{{SubnetID: fmt.Sprintf("%08x-3333-4000-8000-%012x", i, i), IPAddress: ip}},
		})
		targets = append(targets, Target{ScopeID: net, Addr: mustAddr(ip)})
	}
	return targets, json.NewEncoder(w).Encode(doc)
}

// ReadTargets returns one target per VM port (device_owner compute:*) of a ports document.
func ReadTargets(r io.Reader) ([]Target, error) {
	var doc portsDoc
	if err := json.NewDecoder(r).Decode(&doc); err != nil {
		return nil, fmt.Errorf("ports document: %w", err)
	}
	var out []Target
	for _, p := range doc.Ports {
		if !strings.HasPrefix(p.DeviceOwner, "compute:") {
			continue
		}
		for _, f := range p.FixedIPs {
			a, err := parseAddr(f.IPAddress)
			if err != nil {
				return nil, err
			}
			out = append(out, Target{ScopeID: p.NetworkID, Addr: a})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("ports document: no VM ports")
	}
	return out, nil
}

// WriteNetworks writes a cmd/xds networks file with n networks on node.
func WriteNetworks(w io.Writer, node string, n int) error {
	type netw struct {
		ID        string `json:"id"`
		Kind      string `json:"kind"`
		Interface string `json:"interface"`
	}
	list := make([]netw, n)
	for i := range list {
		id := GenNetworkID(i)
		list[i] = netw{ID: id, Kind: "network", Interface: "tap" + id[:11]}
	}
	return json.NewEncoder(w).Encode(map[string]any{"nodes": map[string]any{node: list}})
}

// FakeNeutron answers the port lookups cmd/extproc makes (GET /v2.0/ports?network_id=&fixed_ips=
// ip_address=) with one instance port synthesized from the (network, address) pair, and its
// readiness probe with no port. It lets the memory of the Neutron-mode cache be measured for 100k
// VMs without creating 100k ports in a real Neutron. It is not a Neutron for anything else.
type FakeNeutron struct {
	lookups atomic.Int64
}

// Lookups is the number of port lookups answered with a port.
func (f *FakeNeutron) Lookups() int64 { return f.lookups.Load() }

func (f *FakeNeutron) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || strings.TrimSuffix(r.URL.Path, "/") != "/v2.0/ports" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	network, fixed := q.Get("network_id"), q.Get("fixed_ips")
	w.Header().Set("Content-Type", "application/json")
	if network == "" || !strings.HasPrefix(fixed, "ip_address=") {
		io.WriteString(w, `{"ports":[]}`)
		return
	}
	f.lookups.Add(1)
	h := fnv.New64a()
	io.WriteString(h, network+"/"+fixed)
	k := h.Sum64()
	fmt.Fprintf(w, `{"ports":[{"id":"%08x-1111-4000-8000-%012x","device_id":"%08x-2222-4000-8000-%012x","project_id":"0a1b2c3d4e5f40718293a4b5c6d7e8f9","tenant_id":"0a1b2c3d4e5f40718293a4b5c6d7e8f9","network_id":%q}]}`,
		uint32(k), k&0xffffffffffff, uint32(k>>32), k>>16&0xffffffffffff, network)
}
