package decide

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

type oneVM struct{}

func (oneVM) Resolve(_ context.Context, q resolve.Query) (resolve.Instance, error) {
	if q.Addr == netip.MustParseAddr("10.0.0.5") {
		return resolve.Instance{InstanceID: "0a1b2c3d-0000-4000-8000-000000000001", ProjectID: "p1"}, nil
	}
	return resolve.Instance{}, resolve.ErrNotFound
}

func newDecider(tb testing.TB) *Decider {
	tb.Helper()
	s, _ := sign.New([]byte("s3cr3t"))
	d, err := New(oneVM{}, s, answercache.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func req(source string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(source)}}},
	}
}

func TestDecisionRecordsOutcome(t *testing.T) {
	d := newDecider(t)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	_, first := d.Decide(ctx, req("10.0.0.5:1"))
	_, second := d.Decide(ctx, req("10.0.0.5:2"))
	if first.Status != http.StatusOK || first.Outcome != answercache.Miss || second.Outcome != answercache.Hit {
		t.Fatalf("decisions %+v then %+v", first, second)
	}
	if second.Instance.InstanceID == "" || d.CacheLen() != 1 {
		t.Fatalf("instance %+v, cache len %d", second.Instance, d.CacheLen())
	}
	for _, a := range second.LogAttrs() {
		if a.Value.String() == "5620efe30f91e1e5d1f6ce3eeb1d755eef49aee6a3b9a627f7130508a61d5aaa" {
			t.Fatal("the signature is in the log attributes")
		}
	}
}

// BenchmarkDecideHit is the hot path: a cached VM, decode + cache hit + the ready-made response.
func BenchmarkDecideHit(b *testing.B) {
	d := newDecider(b)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	r := req("10.0.0.5:41234")
	d.RequestHeaders(ctx, r)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d.RequestHeaders(ctx, r)
		}
	})
}

// TestMissAsksForNovaVerdict: the request that filled the cache asks Envoy for nova's response
// headers, and a 403 there is logged as a refused signature; hits stay one round trip.
func TestMissAsksForNovaVerdict(t *testing.T) {
	var logs bytes.Buffer
	s, _ := sign.New([]byte("s3cr3t"))
	d, err := New(oneVM{}, s, answercache.Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	resp, check := d.RequestHeaders(ctx, req("10.0.0.5:1"))
	if resp.GetModeOverride().GetResponseHeaderMode() != extprocfv3.ProcessingMode_SEND || check == nil {
		t.Fatalf("miss: mode_override %v, check %v; want response headers SEND and a check", resp.GetModeOverride(), check != nil)
	}
	if resp.GetRequestHeaders().GetResponse().GetHeaderMutation() == nil {
		t.Fatal("miss: the signed mutation is missing")
	}
	check(context.Background(), 403)
	if !strings.Contains(logs.String(), "nova refused the signature") || !strings.Contains(logs.String(), "instance_id=0a1b2c3d-0000-4000-8000-000000000001") {
		t.Errorf("403 log:\n%s", logs.String())
	}
	resp, check = d.RequestHeaders(ctx, req("10.0.0.5:2"))
	if resp.GetModeOverride() != nil || check != nil || resp.GetRequestHeaders() == nil {
		t.Errorf("hit: %v, check %v; want the signed answer without mode_override or check", resp, check != nil)
	}
	resp, check = d.RequestHeaders(ctx, req("10.0.0.9:2"))
	if resp.GetImmediateResponse() == nil || check != nil {
		t.Errorf("not found: %v, check %v", resp, check != nil)
	}
}

// TestNova404ShortensTheAnswer: nova answering 404 to the request that filled the cache keeps the
// answer only for the negative TTL, so that the resolver is asked again soon instead of after the
// TTL, and a VM asking for a missing path in a loop is not one lookup per request.
func TestNova404ShortensTheAnswer(t *testing.T) {
	now := time.Unix(1000, 0)
	s, _ := sign.New([]byte("s3cr3t"))
	d, err := New(oneVM{}, s, answercache.Options{TTL: 10 * time.Second, NegativeTTL: 2 * time.Second,
		Now: func() time.Time { return now }}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	_, check := d.RequestHeaders(ctx, req("10.0.0.5:1"))
	if check == nil {
		t.Fatal("the fill did not ask for nova's verdict")
	}
	check(context.Background(), http.StatusNotFound)
	now = now.Add(time.Second)
	if _, dec := d.Decide(ctx, req("10.0.0.5:2")); dec.Outcome != answercache.Hit {
		t.Errorf("1 s after the 404: outcome %s, want hit", dec.Outcome)
	}
	now = now.Add(1100 * time.Millisecond)
	if _, dec := d.Decide(ctx, req("10.0.0.5:3")); dec.Outcome != answercache.Miss {
		t.Errorf("past the negative TTL (inside the TTL): outcome %s, want miss", dec.Outcome)
	}
	_, check = d.RequestHeaders(ctx, req("10.0.0.6:1"))
	if check != nil {
		t.Fatal("a not-found answer asked for nova's verdict")
	}
	_, check = d.RequestHeaders(ctx, req("10.0.0.5:3"))
	if check != nil {
		t.Fatal("a hit asked for nova's verdict")
	}
}

// failing fails every lookup with err.
type failing struct{ err error }

func (f failing) Resolve(context.Context, resolve.Query) (resolve.Instance, error) {
	return resolve.Instance{}, f.err
}

// TestUnavailableBodyNamesTheCause: the VM's 503 says whether Neutron is down, Keystone is down
// or the credentials are refused, without naming hosts or users.
func TestUnavailableBodyNamesTheCause(t *testing.T) {
	tests := map[cause.Cause]string{
		cause.Unreachable:         "Neutron is unreachable",
		cause.ServerError:         "Neutron is unreachable",
		cause.KeystoneUnreachable: "Keystone is unreachable",
		cause.Credentials:         "refuses the metadata proxy's credentials",
		cause.Forbidden:           "refuses the metadata proxy's credentials",
		cause.TLS:                 "does not trust the certificate",
	}
	s, _ := sign.New([]byte("s3cr3t"))
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	for c, want := range tests {
		err := fmt.Errorf("resolve: %w: %w", resolve.ErrUnavailable, &cause.Error{Cause: c, Err: fmt.Errorf("secret-host.example as user metaproxy")})
		d, _ := New(failing{err}, s, answercache.Options{}, slog.New(slog.DiscardHandler))
		resp, dec := d.Decide(ctx, req("10.0.0.5:1"))
		body := string(resp.GetImmediateResponse().GetBody())
		if dec.Status != http.StatusServiceUnavailable || !strings.Contains(body, want) || strings.Contains(body, "secret-host") {
			t.Errorf("%s: %d %q, want 503 saying %q", c, dec.Status, body, want)
		}
	}
}

// freshVMs resolves every address to its own instance, with new strings each time (as a Neutron
// JSON response gives them), so that the cache owns everything it keeps.
type freshVMs struct{}

func (freshVMs) Resolve(_ context.Context, q resolve.Query) (resolve.Instance, error) {
	b := q.Addr.As4()
	return resolve.Instance{
		InstanceID: fmt.Sprintf("0a1b2c3d-0000-4000-8000-%04x%04x%04x", b[1], b[2], b[3]),
		ProjectID:  fmt.Sprintf("f00dfeedf00dfeedf00dfeedf00d%04x", b[1]),
		PortID:     fmt.Sprintf("7e57d00d-0000-4000-8000-%04x%04x%04x", b[1], b[2], b[3]),
		NetworkID:  strings.Clone(q.Scope.ID),
	}, nil
}

// BenchmarkMemoryPerCachedVM is the live heap one cached VM costs: 100k VMs on 100 networks, each
// decided once (its answer cached), with the network id arriving as a new string per request as
// gRPC metadata does. Run with -benchtime=1x; it reports bytes per VM, not time.
func BenchmarkMemoryPerCachedVM(b *testing.B) {
	const vms, networks = 100000, 100
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for b.Loop() {
		s, _ := sign.New([]byte("s3cr3t"))
		base := heap()
		d, err := New(freshVMs{}, s, answercache.Options{Size: vms}, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		for i := range vms {
			network := fmt.Sprintf("5e1f0000-0000-4000-8000-%012d", i%networks)
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, network))
			addr := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			if _, dec := d.Decide(ctx, req(netip.AddrPortFrom(addr, 40000).String())); dec.Status != http.StatusOK {
				b.Fatalf("decision %+v", dec)
			}
		}
		if d.CacheLen() != vms {
			b.Fatalf("%d cached, want %d", d.CacheLen(), vms)
		}
		b.ReportMetric(float64(heap()-base)/vms, "B/VM")
		runtime.KeepAlive(d)
	}
}

// panics is a resolver with a bug.
type panics struct{}

func (panics) Resolve(context.Context, resolve.Query) (resolve.Instance, error) {
	var inst *resolve.Instance
	return *inst, nil // nil dereference
}

// TestResolverPanicIsAnError: a panic in the port source, which runs on the cache's own goroutine
// where no stream could recover it, answers 500 instead of ending the process.
func TestResolverPanicIsAnError(t *testing.T) {
	var logs bytes.Buffer
	s, _ := sign.New([]byte("s3cr3t"))
	d, err := New(panics{}, s, answercache.Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	resp, dec := d.Decide(metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1")), req("10.0.0.5:1"))
	if dec.Status != http.StatusInternalServerError || resp.GetImmediateResponse().GetStatus().GetCode() != http.StatusInternalServerError {
		t.Fatalf("decision %+v, response %v; want a 500", dec, resp)
	}
	if !strings.Contains(logs.String(), "panic in the port source") {
		t.Errorf("the panic is not logged:\n%s", logs.String())
	}
}
