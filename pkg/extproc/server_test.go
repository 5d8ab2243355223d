package extproc_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/extproc"
	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

const (
	net1   = "6a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"
	net2   = "7b2c3d4e-5f60-4182-9304-b5c6d7e8f901"
	vm1    = "0a1b2c3d-0000-4000-8000-000000000001"
	proj1  = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
	secret = "s3cr3t"
	// vm1Sig = openssl dgst -sha256 -hmac s3cr3t over vm1 (see pkg/sign).
	vm1Sig = "5620efe30f91e1e5d1f6ce3eeb1d755eef49aee6a3b9a627f7130508a61d5aaa"
)

// ports is a resolver over a fixed table that records every query it is asked.
type ports struct {
	mu      sync.Mutex
	queries []resolve.Query
}

func (p *ports) Resolve(_ context.Context, q resolve.Query) (resolve.Instance, error) {
	p.mu.Lock()
	p.queries = append(p.queries, q)
	p.mu.Unlock()
	switch {
	case q.Scope == resolve.Scope{Kind: resolve.KindNetwork, ID: net1} && q.Addr == netip.MustParseAddr("10.0.0.5"):
		return resolve.Instance{InstanceID: vm1, ProjectID: proj1, PortID: "port1", NetworkID: net1}, nil
	case q.Scope == resolve.Scope{Kind: resolve.KindNetwork, ID: net2} && q.Addr == netip.MustParseAddr("10.0.0.5"):
		return resolve.Instance{InstanceID: "vm-on-net2", ProjectID: "proj2", PortID: "port2", NetworkID: net2}, nil
	case q.Addr == netip.MustParseAddr("10.0.0.66"):
		return resolve.Instance{}, &resolve.AmbiguousError{PortIDs: []string{"pa", "pb"}}
	case q.Addr == netip.MustParseAddr("10.0.0.99"):
		return resolve.Instance{}, fmt.Errorf("neutron: %w", resolve.ErrUnavailable)
	}
	return resolve.Instance{}, resolve.ErrNotFound
}

// served is a Server on a real UNIX socket, with a client connection to it.
type served struct {
	conn   *grpc.ClientConn
	sock   string
	health *health.Server
	stop   context.CancelFunc // starts the shutdown
	done   chan struct{}      // closed when Serve returned, with err
	err    error
}

// serve runs a Server answering with p (options opts) on a UNIX socket until the test ends, with the
// shutdown grace given.
func serve(t *testing.T, p extproc.Processor, grace time.Duration, opts ...extproc.ServerOption) *served {
	t.Helper()
	s := &served{sock: filepath.Join(t.TempDir(), "extproc.sock"), done: make(chan struct{})}
	l, err := listen.Open("unix://" + s.sock)
	if err != nil {
		t.Fatal(err)
	}
	var g *grpc.Server
	g, s.health = extproc.NewGRPCServer(extproc.NewServer(p, slog.New(slog.DiscardHandler), opts...))
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() {
		defer close(s.done)
		s.err = extproc.Serve(ctx, g, l, grace)
	}()
	if s.conn, err = grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.conn.Close()
		cancel()
		<-s.done
		if s.err != nil {
			t.Errorf("serve: %v", s.err)
		}
	})
	return s
}

// start serves a Decider over the ports table and returns the connection, the table and a switch
// of gRPC health.
func start(t *testing.T) (*grpc.ClientConn, *ports, func(bool)) {
	t.Helper()
	p := &ports{}
	s, err := sign.New([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	d, err := decide.New(p, s, answercache.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, d, time.Second)
	return srv.conn, p, func(on bool) { extproc.SetServing(srv.health, on) }
}

// envoyHeaders is the request_headers message Envoy sends: lower-cased keys, raw_value only,
// pseudo-headers first, and the source.address attribute.
func envoyHeaders(source string, vmHeaders ...string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":authority", RawValue: []byte("169.254.169.254")},
		{Key: ":path", RawValue: []byte("/openstack/latest/meta_data.json")},
		{Key: ":method", RawValue: []byte("GET")},
		{Key: ":scheme", RawValue: []byte("http")},
		{Key: "user-agent", RawValue: []byte("Cloud-Init/23.1")},
	}}
	for i := 0; i+1 < len(vmHeaders); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: strings.ToLower(vmHeaders[i]), RawValue: []byte(vmHeaders[i+1])})
	}
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}}}
	if source != "" {
		req.Attributes = map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(source)}}}
	}
	return req
}

// roundTrip opens one stream as Envoy does (initial metadata from the listener), sends req and
// returns the answer.
func roundTrip(t *testing.T, conn *grpc.ClientConn, md metadata.MD, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	t.Helper()
	ctx := metadata.NewOutgoingContext(context.Background(), md)
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream did not close cleanly after half-close: %v", err)
	}
	return resp
}

// header is one request header as nova would see it.
type header struct{ key, value string }

// applyAsEnvoy applies a HeadersResponse to the VM's headers the way Envoy's ext_proc filter does
// (mutation_utils.cc): remove_headers first, case-insensitively, then set_headers from raw_value,
// overwriting every copy. It fails the test on a mutation Envoy would reject or mis-apply.
func applyAsEnvoy(t *testing.T, vm []header, resp *extprocv3.ProcessingResponse) []header {
	t.Helper()
	hr := resp.GetRequestHeaders()
	if hr == nil {
		t.Fatalf("not a request_headers response: %v", resp)
	}
	m := hr.GetResponse().GetHeaderMutation()
	out := append([]header(nil), vm...)
	for _, name := range m.GetRemoveHeaders() {
		out = without(out, name)
	}
	for _, sh := range m.GetSetHeaders() {
		h := sh.GetHeader()
		if h.GetValue() != "" {
			t.Fatalf("header %s sets value (%q): only raw_value may be set", h.GetKey(), h.GetValue())
		}
		//lint:ignore SA1019 the deprecated append must stay unset: Envoy then overwrites
		if sh.GetAppend() != nil {
			t.Fatalf("header %s uses the deprecated append", h.GetKey())
		}
		if sh.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Fatalf("header %s append_action %v", h.GetKey(), sh.GetAppendAction())
		}
		out = append(without(out, h.GetKey()), header{strings.ToLower(h.GetKey()), string(h.GetRawValue())})
	}
	return out
}

func without(hs []header, name string) []header {
	var out []header
	for _, h := range hs {
		if !strings.EqualFold(h.key, name) {
			out = append(out, h)
		}
	}
	return out
}

func values(hs []header, name string) []string {
	var v []string
	for _, h := range hs {
		if strings.EqualFold(h.key, name) {
			v = append(v, h.value)
		}
	}
	return v
}

func TestSignedHeadersOverRealSocket(t *testing.T) {
	conn, p, _ := start(t)
	md := metadata.Pairs(contract.NetworkIDMetadata, net1)
	resp := roundTrip(t, conn, md, envoyHeaders("10.0.0.5:41234"))
	got := applyAsEnvoy(t, nil, resp)
	want := map[string]string{"x-instance-id": vm1, "x-tenant-id": proj1, "x-instance-id-signature": vm1Sig, "x-forwarded-for": "10.0.0.5"}
	for k, v := range want {
		if vs := values(got, k); len(vs) != 1 || vs[0] != v {
			t.Errorf("%s = %q, want exactly [%s]", k, vs, v)
		}
	}
	if len(p.queries) != 1 || p.queries[0].Scope.ID != net1 {
		t.Errorf("queries %v", p.queries)
	}
}

func TestIPv6AndMappedSources(t *testing.T) {
	conn, p, _ := start(t)
	md := metadata.Pairs(contract.NetworkIDMetadata, net1)
	roundTrip(t, conn, md, envoyHeaders("[::ffff:10.0.0.5]:41234"))
	if p.queries[0].Addr != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("mapped address resolved as %s", p.queries[0].Addr)
	}
	resp := roundTrip(t, conn, md, envoyHeaders("[fe80::f816:3eff:fe12:3456]:5000"))
	if resp.GetImmediateResponse().GetStatus().GetCode() != http.StatusNotFound {
		t.Errorf("unknown link-local: %v", resp)
	}
	if p.queries[1].Addr != netip.MustParseAddr("fe80::f816:3eff:fe12:3456") {
		t.Errorf("link-local resolved as %s", p.queries[1].Addr)
	}
}

func TestImmediateResponses(t *testing.T) {
	conn, _, _ := start(t)
	tests := map[string]struct {
		md       metadata.MD
		source   string
		status   int
		bodyPart string
	}{
		"no network or router":   {md: metadata.MD{}, source: "10.0.0.5:1", status: 400, bodyPart: "no network id or router id"},
		"network and router":     {md: metadata.Pairs(contract.NetworkIDMetadata, net1, contract.RouterIDMetadata, "r1"), source: "10.0.0.5:1", status: 400},
		"unknown address":        {md: metadata.Pairs(contract.NetworkIDMetadata, net1), source: "10.0.0.7:1", status: 404, bodyPart: "Instance was not found on network " + net1},
		"several ports":          {md: metadata.Pairs(contract.NetworkIDMetadata, net1), source: "10.0.0.66:1", status: 500},
		"neutron unreachable":    {md: metadata.Pairs(contract.NetworkIDMetadata, net1), source: "10.0.0.99:1", status: 503, bodyPart: "Neutron is unreachable"},
		"no source attribute":    {md: metadata.Pairs(contract.NetworkIDMetadata, net1), status: 500},
		"garbage source address": {md: metadata.Pairs(contract.NetworkIDMetadata, net1), source: "::::", status: 500},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp := roundTrip(t, conn, tc.md, envoyHeaders(tc.source))
			ir := resp.GetImmediateResponse()
			if ir == nil {
				t.Fatalf("want an immediate response, got %v", resp)
			}
			if int(ir.GetStatus().GetCode()) != tc.status {
				t.Errorf("status %d, want %d", ir.GetStatus().GetCode(), tc.status)
			}
			if !strings.Contains(string(ir.GetBody()), tc.bodyPart) {
				t.Errorf("body %q does not contain %q", ir.GetBody(), tc.bodyPart)
			}
			for _, h := range ir.GetHeaders().GetSetHeaders() {
				if h.GetHeader().GetValue() != "" {
					t.Errorf("immediate response header %s uses value, not raw_value", h.GetHeader().GetKey())
				}
			}
		})
	}
}

// TestSpoofMatrix: whatever identity headers a VM sends (every name, any case, duplicated, with
// values that name another VM, network or address), nova sees exactly the identity Envoy knows.
func TestSpoofMatrix(t *testing.T) {
	conn, p, _ := start(t)
	md := metadata.Pairs(contract.NetworkIDMetadata, net1)
	forged := map[string]string{
		"x-instance-id": "vm-on-net2", "x-instance-id-signature": "deadbeef", "x-tenant-id": "proj2",
		"x-forwarded-for": "10.0.0.77", "x-neutron-network-id": net2, "x-neutron-router-id": "r-evil",
		"x-ovn-network-id": net2, "x-metadata-provider": "evil", "x-metadata-provider-signature": "evil",
	}
	cases := map[string]func(string) []string{
		"lower":      func(k string) []string { return []string{k} },
		"upper":      func(k string) []string { return []string{strings.ToUpper(k)} },
		"mixed":      func(k string) []string { return []string{mixedCase(k)} },
		"duplicated": func(k string) []string { return []string{k, mixedCase(k), strings.ToUpper(k)} },
	}
	for caseName, names := range cases {
		for key, val := range forged {
			t.Run(caseName+"/"+key, func(t *testing.T) {
				var vm []header
				var wire []string
				for _, n := range names(key) {
					vm = append(vm, header{n, val})
					wire = append(wire, n, val)
				}
				resp := roundTrip(t, conn, md, envoyHeaders("10.0.0.5:41234", wire...))
				got := applyAsEnvoy(t, vm, resp)
				want := map[string]string{"x-instance-id": vm1, "x-tenant-id": proj1, "x-instance-id-signature": vm1Sig, "x-forwarded-for": "10.0.0.5"}
				for k, v := range want {
					if vs := values(got, k); len(vs) != 1 || vs[0] != v {
						t.Errorf("%s reaches nova as %q, want exactly [%s]", k, vs, v)
					}
				}
				for _, k := range []string{"x-neutron-network-id", "x-neutron-router-id", "x-ovn-network-id", "x-metadata-provider", "x-metadata-provider-signature"} {
					if vs := values(got, k); len(vs) != 0 {
						t.Errorf("VM-sent %s reaches nova: %q", k, vs)
					}
				}
			})
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range p.queries {
		if q.Scope.ID != net1 || q.Addr != netip.MustParseAddr("10.0.0.5") {
			t.Fatalf("a VM header chose what was resolved: %+v", q)
		}
	}
}

func mixedCase(s string) string {
	b := []byte(s)
	for i := range b {
		if i%2 == 0 && b[i] >= 'a' && b[i] <= 'z' {
			b[i] -= 'a' - 'A'
		}
	}
	return string(b)
}

func TestOverlappingAddressesOnTwoNetworks(t *testing.T) {
	conn, _, _ := start(t)
	a := applyAsEnvoy(t, nil, roundTrip(t, conn, metadata.Pairs(contract.NetworkIDMetadata, net1), envoyHeaders("10.0.0.5:1")))
	b := applyAsEnvoy(t, nil, roundTrip(t, conn, metadata.Pairs(contract.NetworkIDMetadata, net2), envoyHeaders("10.0.0.5:1")))
	if values(a, "x-instance-id")[0] != vm1 || values(b, "x-instance-id")[0] != "vm-on-net2" {
		t.Fatalf("same IP on two networks resolved to %v and %v", values(a, "x-instance-id"), values(b, "x-instance-id"))
	}
}

func TestOtherPhasesPassThroughUnchanged(t *testing.T) {
	conn, _, _ := start(t)
	ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, net1))
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msgs := []*extprocv3.ProcessingRequest{
		envoyHeaders("10.0.0.5:1"),
		{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("pw"), EndOfStream: true}}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
		{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{}}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch m.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestBody:
			if resp.GetRequestBody() == nil || resp.GetRequestBody().GetResponse().GetBodyMutation() != nil {
				t.Errorf("request body answer %v", resp)
			}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			if resp.GetResponseHeaders() == nil {
				t.Errorf("response headers answer %v", resp)
			}
		case *extprocv3.ProcessingRequest_ResponseBody:
			if resp.GetResponseBody() == nil {
				t.Errorf("response body answer %v", resp)
			}
		}
	}
	stream.CloseSend()
}

func TestHealth(t *testing.T) {
	conn, _, setServing := start(t)
	hc := healthpb.NewHealthClient(conn)
	check := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: extprocv3.ExternalProcessor_ServiceDesc.ServiceName})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetStatus()
	}
	if s := check(); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("before ready: %v", s)
	}
	setServing(true)
	if s := check(); s != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("after ready: %v", s)
	}
}

// verdictProcessor answers with a fixed response and a check that records nova's status.
type verdictProcessor struct{ got chan int }

func (v verdictProcessor) RequestHeaders(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, func(context.Context, int)) {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}},
		func(_ context.Context, status int) { v.got <- status }
}

func TestResponseHeadersReachTheCheck(t *testing.T) {
	p := verdictProcessor{got: make(chan int, 1)}
	stream, err := extprocv3.NewExternalProcessorClient(serve(t, p, time.Second).conn).Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(envoyHeaders("10.0.0.5:1"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte("403")}, {Key: "content-type", RawValue: []byte("text/html")}}}}}})
	resp, err := stream.Recv()
	if err != nil || resp.GetResponseHeaders() == nil || resp.GetResponseHeaders().GetResponse().GetHeaderMutation() != nil {
		t.Fatalf("response headers answer %v, %v; want an unchanged HeadersResponse", resp, err)
	}
	if got := <-p.got; got != 403 {
		t.Errorf("check saw status %d, want 403", got)
	}
}

// panicky panics on the request_headers of 10.0.0.66 and in the check of nova's status 500;
// it answers any other request like verdictProcessor.
type panicky struct{}

func (panicky) RequestHeaders(_ context.Context, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, func(context.Context, int)) {
	src := req.GetAttributes()[contract.ExtProcAttributesKey].GetFields()[contract.SourceAddressAttribute].GetStringValue()
	if strings.HasPrefix(src, "10.0.0.66:") {
		_ = src[len(src)] // out of range: a runtime error, as a bug would cause
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}},
		func(_ context.Context, status int) {
			if status == 500 {
				panic("check")
			}
		}
}

// TestPanicCostsOneRequest: a panic while answering a stream, in the decision or in the check of
// nova's answer, answers that request 500 and is counted; the server goes on serving, on the same
// connection, over a real UNIX socket.
func TestPanicCostsOneRequest(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	conn, ctx := serve(t, panicky{}, time.Second, extproc.WithMetrics(mp)).conn, context.Background()

	isPanic500 := func(resp *extprocv3.ProcessingResponse) bool {
		ir := resp.GetImmediateResponse()
		return ir.GetStatus().GetCode() == 500 && strings.Contains(string(ir.GetBody()), "Internal error")
	}
	if resp := roundTrip(t, conn, metadata.MD{}, envoyHeaders("10.0.0.66:1")); !isPanic500(resp) {
		t.Fatalf("panicking decision answered %v, want a 500 immediate response", resp)
	}
	if resp := roundTrip(t, conn, metadata.MD{}, envoyHeaders("10.0.0.5:1")); resp.GetRequestHeaders() == nil {
		t.Fatalf("after a panic: %v, want the request answered", resp)
	}

	// A panic in the check of nova's status, on the response_headers message.
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(envoyHeaders("10.0.0.5:2")); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte("500")}}}}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || !isPanic500(resp) {
		t.Fatalf("panicking check answered %v, %v; want a 500 immediate response", resp, err)
	}
	stream.CloseSend()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if got := counter(rm, "metaproxy.extproc.panics"); got != 2 {
		t.Errorf("panics counted %d, want 2", got)
	}
}

// counter returns the value of the int64 counter name in rm (0 when absent).
func counter(rm metricdata.ResourceMetrics, name string) int64 {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				var n int64
				for _, dp := range s.DataPoints {
					n += dp.Value
				}
				return n
			}
		}
	}
	return 0
}

// held answers request_headers only once release is closed, and says when one arrived.
type held struct {
	arrived chan struct{}
	release chan struct{}
}

func (h held) RequestHeaders(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, func(context.Context, int)) {
	h.arrived <- struct{}{}
	<-h.release
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}, nil
}

// stopped fails the test unless Serve returns (the bound is only there so a hung shutdown fails
// the test instead of the test binary's timeout).
func stopped(t *testing.T, s *served) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("shutdown did not end")
	}
}

// TestShutdownCutsAStreamThatNeverEnds: a client that opens a stream and never ends it does not
// hold the shutdown past the grace: the stream is cut and Serve returns.
func TestShutdownCutsAStreamThatNeverEnds(t *testing.T) {
	srv := serve(t, verdictProcessor{got: make(chan int, 1)}, 50*time.Millisecond)
	stream, err := extprocv3.NewExternalProcessorClient(srv.conn).Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(envoyHeaders("10.0.0.5:1")); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the stream is open on the server: it answered
		t.Fatal(err)
	}
	srv.stop() // and it is never half-closed
	stopped(t, srv)
	if _, err := stream.Recv(); err == nil {
		t.Fatal("the stream outlived the server")
	}
}

// TestShutdownLetsStreamsInFlightFinish: within the grace, a stream being answered when the
// shutdown starts gets its answer, and no new connection is accepted meanwhile.
func TestShutdownLetsStreamsInFlightFinish(t *testing.T) {
	p := held{arrived: make(chan struct{}, 1), release: make(chan struct{})}
	srv := serve(t, p, time.Minute)
	answered := make(chan *extprocv3.ProcessingResponse, 1)
	go func() {
		ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, net1))
		stream, err := extprocv3.NewExternalProcessorClient(srv.conn).Process(ctx)
		if err == nil {
			err = stream.Send(envoyHeaders("10.0.0.5:1"))
		}
		var resp *extprocv3.ProcessingResponse
		if err == nil {
			resp, _ = stream.Recv()
			stream.CloseSend() // as Envoy does once answered: the stream ends
			stream.Recv()
		}
		answered <- resp
	}()
	<-p.arrived // the decision is under way
	srv.stop()
	// The shutdown has begun once the listener refuses connections.
	for {
		c, err := net.Dial("unix", srv.sock)
		if err != nil {
			break
		}
		c.Close()
		runtime.Gosched()
	}
	close(p.release)
	if resp := <-answered; resp.GetRequestHeaders() == nil {
		t.Fatalf("the stream in flight got %v, want its answer", resp)
	}
	stopped(t, srv)
}
