package hcm

import (
	"context"
	"encoding/hex"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	tracingv3 "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/cluster"
)

// The trace context a VM sends: its own trace and parent, sampled.
const (
	vmTraceID     = "0af7651916cd43dd8448eb211c80319c"
	vmParentID    = "b7ad6b7169203331"
	vmTraceparent = "00-" + vmTraceID + "-" + vmParentID + "-01"
)

// tracedHCM is what pkg/xds/translate gives a listener with Envoy's tracing on: use_remote_address,
// ext_proc to cluster extproc, the router, the OpenTelemetry tracer exporting to cluster
// otel_collector; early are its early header mutations (none: nil).
func tracedHCM(t *testing.T, random float64, early ...*corev3.TypedExtensionConfig) *hcmv3.HttpConnectionManager {
	t.Helper()
	m := minimalHCM(t)
	m.UseRemoteAddress = wrapperspb.Bool(true)
	m.SkipXffAppend = true
	m.HttpFilters = append([]*hcmv3.HttpFilter{{Name: ExtProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: extProcWith(t, nil)}}}, m.HttpFilters...)
	m.Tracing = &hcmv3.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: random},
		Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.opentelemetry", ConfigType: &tracev3.Tracing_Http_TypedConfig{
			TypedConfig: packAny(t, &tracev3.OpenTelemetryConfig{
				GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "otel_collector"}}},
				ServiceName: "metaproxy-envoy",
			})}},
	}
	m.EarlyHeaderMutationExtensions = early
	return m
}

// traceRig serves an HCM over HTTP with real gRPC servers behind its clusters: an ext_proc server
// that lets every request through and records the stream's metadata, an OTLP collector, and a
// "nova" that records the headers it receives.
type traceRig struct {
	url       string
	extprocMD chan metadata.MD
	spans     chan *tracepb.ResourceSpans
	nova      chan http.Header
}

type recordingExtProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	md chan metadata.MD
}

func (p *recordingExtProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	p.md <- md
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return stream.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{}}})
}

type recordingCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	spans chan *tracepb.ResourceSpans
}

func (c *recordingCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		c.spans <- rs
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func grpcServer(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

func newTraceRig(t *testing.T, m *hcmv3.HttpConnectionManager) *traceRig {
	t.Helper()
	r := &traceRig{extprocMD: make(chan metadata.MD, 10), spans: make(chan *tracepb.ResourceSpans, 10), nova: make(chan http.Header, 10)}
	extproc := grpcServer(t, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, &recordingExtProc{md: r.extprocMD}) })
	collector := grpcServer(t, func(g *grpc.Server) {
		collectortrace.RegisterTraceServiceServer(g, &recordingCollector{spans: r.spans})
	})
	nova := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.nova <- req.Header.Clone()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(nova.Close)
	clusters := cluster.NewManager()
	t.Cleanup(clusters.Close)
	cfgs := map[string]*cluster.Config{
		"extproc":        {Name: "extproc", ConnectTimeout: time.Second, HTTP2: true, Endpoints: []cluster.Endpoint{{Network: "tcp", Address: extproc}}},
		"otel_collector": {Name: "otel_collector", ConnectTimeout: time.Second, HTTP2: true, Endpoints: []cluster.Endpoint{{Network: "tcp", Address: collector}}},
		"nova":           {Name: "nova", ConnectTimeout: time.Second, Endpoints: []cluster.Endpoint{{Network: "tcp", Address: strings.TrimPrefix(nova.URL, "http://")}}},
	}
	clusters.Update(cfgs, map[string]string{"extproc": "1", "otel_collector": "1", "nova": "1"})
	c, err := Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	if c.tracing != nil && c.tracing.tracer != nil {
		c.tracing.tracer.minFlush = 1 // export every span at once: the test waits for them
	}
	srv := httptest.NewServer(c.Handler(&Env{Clusters: clusters, Stats: NewStats(), Log: slog.New(slog.DiscardHandler)}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

// get sends a VM request with headers h and waits for its answer.
func (r *traceRig) get(t *testing.T, h map[string]string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.url+"/openstack/latest/meta_data.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func receive[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
		panic("unreachable")
	}
}

// traceparentOf parses a traceparent value into its trace id, span id and sampled flag.
func traceparentOf(t *testing.T, v string) (trace, span string, sampled bool) {
	t.Helper()
	tr, sp, smp, err := parseTraceparent(v)
	if err != nil {
		t.Fatalf("traceparent %q: %v", v, err)
	}
	return hex.EncodeToString(tr), hex.EncodeToString(sp), smp
}

// vmHeaders is what a hostile VM sends to choose the trace and force sampling.
func vmHeaders() map[string]string {
	return map[string]string{
		"traceparent": vmTraceparent, "tracestate": "vm=chosen", "baggage": "tenant=victim", "x-client-trace-id": "vm-forced",
	}
}

// dropVMTrace is the early header mutation pkg/xds/translate configures (its trace-context part).
func dropVMTrace(t *testing.T) *corev3.TypedExtensionConfig {
	return earlyExtension(t, remove("traceparent"), remove("tracestate"), remove("baggage"), remove("x-client-trace-id"))
}

// TestTracingContinuesTheVMsTraceWithoutEarlyMutation is the attack, as Envoy allows it: with
// tracing on and nothing removing the VM's trace context, the request's span continues the VM's
// trace, so the ext_proc stream's gRPC metadata (what cmd/extproc continues) names the VM's trace,
// and the VM's baggage and tracestate reach the upstream.
func TestTracingContinuesTheVMsTraceWithoutEarlyMutation(t *testing.T) {
	r := newTraceRig(t, tracedHCM(t, 100))
	r.get(t, vmHeaders())
	md := receive(t, r.extprocMD, "ext_proc stream")
	trace, _, _ := traceparentOf(t, strings.Join(md.Get("traceparent"), ""))
	if trace != vmTraceID {
		t.Errorf("ext_proc metadata trace %s, want the VM's %s (Envoy continues a valid traceparent)", trace, vmTraceID)
	}
	if got := md.Get("tracestate"); len(got) != 1 || got[0] != "vm=chosen" {
		t.Errorf("ext_proc metadata tracestate %q, want the VM's", got)
	}
	nova := receive(t, r.nova, "upstream request")
	if nova.Get("Baggage") != "tenant=victim" {
		t.Errorf("upstream baggage %q, want the VM's passed on", nova.Get("Baggage"))
	}
}

// TestTracingStartsEnvoysOwnTrace: with the early header mutation, the VM's trace context is gone
// before the span starts: Envoy's server span is the root of a new trace, the ext_proc client span
// is its child and is what the stream's metadata names, the upstream gets the server span's
// context, and neither baggage nor x-client-trace-id nor the VM's tracestate travel on. Both
// spans reach the collector with Envoy's resource.
func TestTracingStartsEnvoysOwnTrace(t *testing.T) {
	r := newTraceRig(t, tracedHCM(t, 100, dropVMTrace(t)))
	r.get(t, vmHeaders())
	md := receive(t, r.extprocMD, "ext_proc stream")
	mdTrace, mdSpan, sampled := traceparentOf(t, strings.Join(md.Get("traceparent"), ""))
	if mdTrace == vmTraceID || !sampled {
		t.Fatalf("ext_proc metadata trace %s sampled %v, want a new sampled trace", mdTrace, sampled)
	}
	if got := md.Get("tracestate"); len(got) != 1 || got[0] != "" {
		t.Errorf("ext_proc metadata tracestate %q, want Envoy's (empty)", got)
	}
	nova := receive(t, r.nova, "upstream request")
	for _, h := range []string{"Baggage", "X-Client-Trace-Id"} {
		if v := nova.Values(h); len(v) > 0 {
			t.Errorf("upstream got %s %q", h, v)
		}
	}
	if v := nova.Get("Tracestate"); v != "" {
		t.Errorf("upstream tracestate %q, want Envoy's (empty)", v)
	}
	novaTrace, novaSpan, _ := traceparentOf(t, nova.Get("Traceparent"))

	byName := map[string]*tracepb.Span{}
	for len(byName) < 2 {
		rs := receive(t, r.spans, "exported spans")
		var svc string
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				svc = kv.GetValue().GetStringValue()
			}
		}
		if svc != "metaproxy-envoy" {
			t.Errorf("service.name %q, want metaproxy-envoy", svc)
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				byName[sp.GetName()] = sp
			}
		}
	}
	server, client := byName["ingress"], byName[extProcSpanName]
	if server == nil || client == nil {
		t.Fatalf("spans %v, want ingress and %s", byName, extProcSpanName)
	}
	if len(server.GetParentSpanId()) != 0 || server.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("server span parent %x kind %v, want a root server span", server.GetParentSpanId(), server.GetKind())
	}
	if hex.EncodeToString(server.GetTraceId()) != mdTrace || hex.EncodeToString(client.GetTraceId()) != mdTrace {
		t.Errorf("span traces %x %x, want %s", server.GetTraceId(), client.GetTraceId(), mdTrace)
	}
	if hex.EncodeToString(client.GetSpanId()) != mdSpan || string(client.GetParentSpanId()) != string(server.GetSpanId()) ||
		client.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("ext_proc span %x (parent %x, kind %v), want %s below the server span %x", client.GetSpanId(), client.GetParentSpanId(), client.GetKind(), mdSpan, server.GetSpanId())
	}
	if novaTrace != mdTrace || novaSpan != hex.EncodeToString(server.GetSpanId()) {
		t.Errorf("upstream traceparent %s-%s, want the server span's %s-%x", novaTrace, novaSpan, mdTrace, server.GetSpanId())
	}
}

// TestTracingDecision: x-client-trace-id forces tracing when random sampling would not trace
// (client_sampling 100%); the early mutation removing it leaves the decision to random sampling. A
// client's x-envoy-force-trace never counts: it is removed from every external request.
func TestTracingDecision(t *testing.T) {
	sampledFlag := func(r *traceRig, h map[string]string) bool {
		r.get(t, h)
		md := receive(t, r.extprocMD, "ext_proc stream")
		<-r.nova
		_, _, sampled := traceparentOf(t, strings.Join(md.Get("traceparent"), ""))
		return sampled
	}
	plain := newTraceRig(t, tracedHCM(t, 0))
	if !sampledFlag(plain, map[string]string{"x-client-trace-id": "vm-forced"}) {
		t.Error("x-client-trace-id did not force tracing")
	}
	if sampledFlag(plain, map[string]string{"x-envoy-force-trace": "true"}) {
		t.Error("an external client's x-envoy-force-trace forced tracing")
	}
	if sampledFlag(plain, nil) {
		t.Error("random_sampling 0% traced a request")
	}
	early := newTraceRig(t, tracedHCM(t, 0, dropVMTrace(t)))
	if sampledFlag(early, map[string]string{"x-client-trace-id": "vm-forced"}) {
		t.Error("x-client-trace-id forced tracing although the early mutation removes it")
	}
}

// TestInvalidTraceparentMeansNoSpan: Envoy gives a request with an invalid traceparent a null span:
// nothing is propagated to ext_proc.
func TestInvalidTraceparentMeansNoSpan(t *testing.T) {
	r := newTraceRig(t, tracedHCM(t, 100))
	r.get(t, map[string]string{"traceparent": "00-" + strings.Repeat("0", 32) + "-" + vmParentID + "-01"})
	if md := receive(t, r.extprocMD, "ext_proc stream"); len(md.Get("traceparent")) != 0 {
		t.Errorf("ext_proc metadata traceparent %q for an invalid downstream one, want none", md.Get("traceparent"))
	}
	<-r.nova
}

func TestParseTraceparent(t *testing.T) {
	tests := map[string]struct {
		v       string
		ok      bool
		sampled bool
	}{
		"sampled":            {vmTraceparent, true, true},
		"not sampled":        {"00-" + vmTraceID + "-" + vmParentID + "-00", true, false},
		"other flags bits":   {"00-" + vmTraceID + "-" + vmParentID + "-03", true, true},
		"future version":     {"cc-" + vmTraceID + "-" + vmParentID + "-01", true, true},
		"too long":           {vmTraceparent + "-x", false, false},
		"upper-case hex":     {"00-" + strings.ToUpper(vmTraceID) + "-" + vmParentID + "-01", true, true},
		"not hex":            {"00-" + strings.Repeat("g", 32) + "-" + vmParentID + "-01", false, false},
		"zero trace id":      {"00-" + strings.Repeat("0", 32) + "-" + vmParentID + "-01", false, false},
		"zero parent id":     {"00-" + vmTraceID + "-" + strings.Repeat("0", 16) + "-01", false, false},
		"misplaced hyphens":  {"00" + vmTraceID + "--" + vmParentID + "-01", false, false},
		"short and empty":    {"", false, false},
		"field sizes differ": {"000-" + vmTraceID[1:] + "-" + vmParentID + "-01", false, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, sampled, err := parseTraceparent(tc.v)
			if (err == nil) != tc.ok || sampled != tc.sampled {
				t.Errorf("parseTraceparent(%q) = sampled %v, err %v; want ok %v sampled %v", tc.v, sampled, err, tc.ok, tc.sampled)
			}
		})
	}
}

// TestTracingRejected: what the stand-in's tracing does not model is NACKed.
func TestTracingRejected(t *testing.T) {
	tests := map[string]struct {
		mutate func(*hcmv3.HttpConnectionManager)
		want   string
	}{
		"another tracer": {func(m *hcmv3.HttpConnectionManager) {
			m.Tracing.Provider.ConfigType = &tracev3.Tracing_Http_TypedConfig{TypedConfig: packAny(t, &tracev3.ZipkinConfig{CollectorCluster: "z", CollectorEndpoint: "/api"})}
		}, "not implemented by the stand-in"},
		"spawn_upstream_span": {func(m *hcmv3.HttpConnectionManager) { m.Tracing.SpawnUpstreamSpan = wrapperspb.Bool(true) }, "spawn_upstream_span"},
		"custom tags": {func(m *hcmv3.HttpConnectionManager) {
			m.Tracing.CustomTags = []*tracingv3.CustomTag{{Tag: "a", Type: &tracingv3.CustomTag_Literal_{Literal: &tracingv3.CustomTag_Literal{Value: "b"}}}}
		}, "custom_tags"},
		"preserve_external_request_id": {func(m *hcmv3.HttpConnectionManager) { m.PreserveExternalRequestId = true }, "preserve_external_request_id"},
		"internal_address_config": {func(m *hcmv3.HttpConnectionManager) {
			m.InternalAddressConfig = &hcmv3.HttpConnectionManager_InternalAddressConfig{UnixSockets: true}
		}, "internal_address_config"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := tracedHCM(t, 100)
			tc.mutate(m)
			_, err := Parse(m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
