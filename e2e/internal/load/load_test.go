package load

import (
	"bytes"
	"context"
	"fmt"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/extproc"
	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

func serveFloor(t *testing.T) string {
	t.Helper()
	addr := "unix://" + filepath.Join(t.TempDir(), "floor.sock")
	l, err := listen.Open(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeFloor(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("floor: %v", err)
		}
	})
	return addr
}

// newDecider is cmd/extproc's decision path over a generated ports document.
func newDecider(t testing.TB, ports, networks int) (*decide.Decider, []Target) {
	t.Helper()
	var buf bytes.Buffer
	targets, err := WritePorts(&buf, ports, networks)
	if err != nil {
		t.Fatal(err)
	}
	r, err := resolve.NewPortsData(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.New([]byte("s3cr3t"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := decide.New(r, s, answercache.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return d, targets
}

func serveMetaproxy(t *testing.T, d *decide.Decider) string {
	t.Helper()
	addr := "unix://" + filepath.Join(t.TempDir(), "extproc.sock")
	l, err := listen.Open(addr)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := extproc.NewGRPCServer(extproc.NewServer(d, slog.New(slog.DiscardHandler)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- extproc.Serve(ctx, g, l, time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	return addr
}

func TestRunExtProc(t *testing.T) {
	d, targets := newDecider(t, 20, 2)
	unknown := Target{ScopeID: targets[0].ScopeID, Addr: netip.MustParseAddr("192.0.2.9")}
	tests := map[string]struct {
		addr       string
		targets    []Target
		rate       float64
		wantOK     int
		wantErrors map[string]int
	}{
		"floor answers every stream with its mutation": {addr: serveFloor(t), targets: targets[:1], wantOK: 40, wantErrors: map[string]int{}},
		"cmd/extproc signs known VMs":                  {addr: serveMetaproxy(t, d), targets: targets, wantOK: 40, wantErrors: map[string]int{}},
		"cmd/extproc answers 404 for an unknown address": {addr: serveMetaproxy(t, d), targets: []Target{targets[0], unknown},
			wantOK: 20, wantErrors: map[string]int{"immediate 404": 20}},
		"open loop sends every scheduled stream": {addr: serveMetaproxy(t, d), targets: []Target{targets[0], unknown}, rate: 4000,
			wantOK: 20, wantErrors: map[string]int{"immediate 404": 20}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := RunExtProc(context.Background(), ExtProcOptions{Address: tc.addr, Concurrency: 1, Rate: tc.rate, Requests: 40, Targets: tc.targets, Conns: 2})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != 40 || res.OK != tc.wantOK || res.Rate != tc.rate {
				t.Errorf("requests %d ok %d rate %v, want 40, %d and %v", res.Requests, res.OK, res.Rate, tc.wantOK, tc.rate)
			}
			if diff := cmp.Diff(tc.wantErrors, res.Errors); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max {
				t.Errorf("latencies out of order: %+v", res)
			}
			// Every decision ends before its stream does, so every quantile does too.
			if res.StreamP50 < res.P50 || res.StreamP99 < res.P99 {
				t.Errorf("whole streams (p50 %s, p99 %s) shorter than decisions (p50 %s, p99 %s)", res.StreamP50, res.StreamP99, res.P50, res.P99)
			}
		})
	}
}

// delayedStream answers each message of a floor stream after a pause.
type delayedStream struct {
	extprocv3.ExternalProcessor_ProcessServer
	delay time.Duration
}

func (s delayedStream) Send(r *extprocv3.ProcessingResponse) error {
	time.Sleep(s.delay)
	return s.ExternalProcessor_ProcessServer.Send(r)
}

// slowFloor is the floor answering each stream after delay.
type slowFloor struct {
	*Floor
	delay time.Duration
}

func (f slowFloor) Process(st extprocv3.ExternalProcessor_ProcessServer) error {
	return f.Floor.Process(delayedStream{st, f.delay})
}

// TestOpenLoopCountsQueueing: one worker, a server that takes 2 ms a stream and 20 streams due
// within 2 ms. The last can only be answered 40 ms after the start, so counted from its scheduled
// start its latency is at least 38 ms; counted from when a worker took it (coordinated omission),
// 2 ms. The bound comes from the server's sleeps, not from how fast this machine is.
func TestOpenLoopCountsQueueing(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "slow.sock")
	l, err := listen.Open(addr)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, slowFloor{NewFloor(), 2 * time.Millisecond})
	go g.Serve(l)
	t.Cleanup(g.Stop)
	res, err := RunExtProc(context.Background(), ExtProcOptions{Address: addr, Concurrency: 1, Rate: 10000, Requests: 20,
		Targets: []Target{{ScopeID: "n", Addr: netip.MustParseAddr("10.0.0.5")}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 20 || res.OK != 20 {
		t.Fatalf("requests %d ok %d, want 20", res.Requests, res.OK)
	}
	if res.Max < 30*time.Millisecond {
		t.Errorf("max latency %s: the wait for the busy worker is not counted", res.Max)
	}
}

func TestEnvoyRequestDecodes(t *testing.T) {
	// What the load client sends must be what cmd/extproc reads from Envoy: scope from the initial
	// metadata, VM address from source.address.
	d, targets := newDecider(t, 3, 1)
	tg := targets[2]
	_, dec := d.Decide(metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, tg.ScopeID)), envoyRequest(tg.Addr, 40001))
	if dec.Status != http.StatusOK || dec.Query.Addr != tg.Addr || dec.Query.Scope.ID != tg.ScopeID {
		t.Fatalf("decision %+v for target %+v", dec, tg)
	}
}

func TestReadCounter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "# TYPE x_total counter\nx_total{a=\"1\"} 3\nx_total{a=\"2\"} 4\nx_total_other 100\ny 1e+06\n")
	}))
	defer srv.Close()
	tests := map[string]struct {
		metric  string
		want    int64
		wantErr bool
	}{
		"sums every label set":          {metric: "x_total", want: 7},
		"reads a plain sample":          {metric: "y", want: 1000000},
		"missing metric is an error":    {metric: "z", wantErr: true},
		"prefix is not the same metric": {metric: "x_total_o", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ReadCounter(context.Background(), srv.URL, tc.metric)
			if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
				t.Fatalf("got %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestNeutronCounterCountsPortLookups(t *testing.T) {
	neutron := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"ports":[]}`) }))
	defer neutron.Close()
	nc, err := NewNeutronCounter(neutron.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(nc)
	defer front.Close()
	for _, p := range []string{"/v2.0/ports?network_id=n&fixed_ips=ip_address%3D10.0.0.5", "/v2.0/ports", "/v2.0/networks", "/v2.0/ports/abc"} {
		resp, err := http.Get(front.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	got, err := ReadCounter(context.Background(), front.URL+CounterPath, PortLookupMetric)
	if err != nil || got != 2 || nc.Lookups() != 2 {
		t.Fatalf("lookups %d (%v), Lookups() %d; want 2", got, err, nc.Lookups())
	}
}

func TestBoundsByCount(t *testing.T) {
	b, err := newBounds(time.Now(), 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for b.next() {
		n++
	}
	if n != 3 {
		t.Fatalf("%d requests allowed, want 3", n)
	}
	if _, err := newBounds(time.Now(), 0, 0); err == nil {
		t.Fatal("unbounded run accepted")
	}
}

// BenchmarkHeaderMutation is the cost of applying a decided answer to a request's headers as Envoy
// does (removals first, then overwrite with raw_value).
func BenchmarkHeaderMutation(b *testing.B) {
	d, targets := newDecider(b, 1, 1)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, targets[0].ScopeID))
	resp, dec := d.Decide(ctx, envoyRequest(targets[0].Addr, 40000))
	if dec.Status != http.StatusOK {
		b.Fatalf("decision %+v", dec)
	}
	mut := resp.GetRequestHeaders().GetResponse().GetHeaderMutation()
	b.ReportAllocs()
	for b.Loop() {
		h := http.Header{"User-Agent": {"Cloud-Init/23.1.2"}, "X-Instance-Id": {"spoofed"}, "Accept": {"*/*"}}
		for _, k := range mut.GetRemoveHeaders() {
			h.Del(k)
		}
		for _, s := range mut.GetSetHeaders() {
			h.Set(s.GetHeader().GetKey(), string(s.GetHeader().GetRawValue()))
		}
	}
}

// heapMiB is the live heap after a full collection.
func heapMiB() float64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// BenchmarkMemory100kPorts splits cmd/extproc's memory at 100k ports into what the ports-file
// resolver holds (its index of every port) and what the cache of 100k ready-made answers adds.
// Run it with -benchtime=1x; the numbers are live heap, not RSS.
func BenchmarkMemory100kPorts(b *testing.B) {
	for b.Loop() {
		base := heapMiB()
		d, targets := newDecider(b, 100000, 100)
		withIndex := heapMiB()
		for _, t := range targets {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, t.ScopeID))
			if _, dec := d.Decide(ctx, envoyRequest(t.Addr, 40000)); dec.Status != http.StatusOK {
				b.Fatalf("decision %+v", dec)
			}
		}
		cached := heapMiB()
		b.ReportMetric(withIndex-base, "MiB-ports-index")
		b.ReportMetric(cached-withIndex, "MiB-100k-cached")
		runtime.KeepAlive(d)
	}
}

// TestFakeNeutronServesTheResolver: the real Neutron resolver finds one instance port per
// (network, address) through FakeNeutron, the same one every time, and different ones elsewhere.
func TestFakeNeutronServesTheResolver(t *testing.T) {
	fn := &FakeNeutron{}
	srv := httptest.NewServer(fn)
	defer srv.Close()
	c, err := osclient.NewNetworkClient(context.Background(), osclient.Options{NeutronURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	r := resolve.NewNeutron(resolve.FixedClient{C: c}, resolve.NeutronOptions{})
	q := func(net, ip string) resolve.Instance {
		t.Helper()
		inst, err := r.Resolve(context.Background(), resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: net}, Addr: netip.MustParseAddr(ip)})
		if err != nil {
			t.Fatal(err)
		}
		return inst
	}
	a, b, c2 := q(GenNetworkID(1), "10.0.0.5"), q(GenNetworkID(1), "10.0.0.5"), q(GenNetworkID(2), "10.0.0.5")
	if a.InstanceID == "" || a != b || a.InstanceID == c2.InstanceID || a.NetworkID != GenNetworkID(1) {
		t.Fatalf("instances %+v %+v %+v", a, b, c2)
	}
	if fn.Lookups() != 3 {
		t.Errorf("lookups %d, want 3", fn.Lookups())
	}
}
