//go:build e2e

package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/metaproxy/metaproxy/pkg/decide"
)

// otlpReceiver is an OTLP/gRPC trace collector keeping every span it is sent, with the attributes
// of its resource.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	span     *tracepb.Span
	resource []*commonpb.KeyValue
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, receivedSpan{span: s, resource: rs.GetResource().GetAttributes()})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) all() []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]receivedSpan(nil), r.spans...)
}

// startOTLPReceiver serves an OTLP trace receiver on 127.0.0.1:0 and returns it with its port.
func startOTLPReceiver(t *testing.T) (*otlpReceiver, int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, r)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return r, l.Addr().(*net.TCPAddr).Port
}

func attrString(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

// allValues renders every attribute of s (span, events, links and resource) as key=value text.
func allValues(s receivedSpan) []string {
	var out []string
	add := func(kvs []*commonpb.KeyValue) {
		for _, kv := range kvs {
			out = append(out, kv.GetKey()+"="+fmt.Sprint(kv.GetValue()))
		}
	}
	add(s.span.GetAttributes())
	add(s.resource)
	for _, ev := range s.span.GetEvents() {
		add(ev.GetAttributes())
	}
	for _, l := range s.span.GetLinks() {
		add(l.GetAttributes())
	}
	out = append(out, "name="+s.span.GetName(), "status="+s.span.GetStatus().GetMessage())
	return out
}

// requestsTotal sums every series of metaproxy_extproc_requests_total on extproc's /metrics.
func requestsTotal(t *testing.T, admin string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, decide.MetricRequests+"{") && !strings.HasPrefix(line, decide.MetricRequests+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// TestObservability: with OTEL_* pointing at a collector, one VM request yields one trace holding
// cmd/extproc's decision span and, below it, the Neutron HTTP client span, with the network and
// instance ids and neither the secret nor the signature; the request counter on /metrics moves.
// Then Envoy's own tracing is turned on (envoyTracingIgnoresTheVM).
func TestObservability(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rec, port := startOTLPReceiver(t)
	e := setup(t, ctx)
	e.extproc.env = append(e.extproc.env, // after the suite's (OS_CLIENT_CONFIG_FILE)
		fmt.Sprintf("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:%d", port),
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
	)
	e.restartExtproc(t)

	before := requestsTotal(t, e.extprocAdmin)
	v := e.vms["a1"]
	ownMetadata(t, v, e.curl(t, v, http.MethodGet, "/openstack/latest/meta_data.json", nil, nil))

	// The decision span(s) of the request; the readiness probe's Neutron calls are traces of their own.
	var decisions []receivedSpan
	eventually(t, 30*time.Second, "the decision span at the collector", func() error {
		decisions = decisions[:0]
		for _, s := range rec.all() {
			if s.span.GetName() == decide.SpanDecide {
				decisions = append(decisions, s)
			}
		}
		if len(decisions) == 0 {
			return fmt.Errorf("%d spans received, no %s", len(rec.all()), decide.SpanDecide)
		}
		return nil
	})
	if len(decisions) != 1 {
		t.Fatalf("%d %s spans for one VM request, want 1", len(decisions), decide.SpanDecide)
	}
	root := decisions[0]
	traceID := hex.EncodeToString(root.span.GetTraceId())
	if got, want := attrString(root.span.GetAttributes(), string(decide.AttrNetworkID)), e.nets["net-a"].ID; got != want {
		t.Errorf("%s %s = %q, want %q", decide.SpanDecide, decide.AttrNetworkID, got, want)
	}
	if got, want := attrString(root.span.GetAttributes(), string(decide.AttrInstanceID)), v.os.InstanceID; got != want {
		t.Errorf("%s %s = %q, want %q", decide.SpanDecide, decide.AttrInstanceID, got, want)
	}
	if svc := attrString(root.resource, "service.name"); svc != "metaproxy-extproc" {
		t.Errorf("service.name = %q, want metaproxy-extproc", svc)
	}

	// The Neutron client span arrives in the same trace, a descendant of the decision. Spans are
	// batched: wait until the trace's parent chain from the Neutron span reaches the decision.
	var trace []receivedSpan
	var neutron *tracepb.Span
	eventually(t, 30*time.Second, "the Neutron span below the decision", func() error {
		trace = trace[:0]
		byID := map[string]*tracepb.Span{}
		neutron = nil
		for _, s := range rec.all() {
			if hex.EncodeToString(s.span.GetTraceId()) != traceID {
				continue
			}
			trace = append(trace, s)
			byID[hex.EncodeToString(s.span.GetSpanId())] = s.span
			if strings.HasPrefix(s.span.GetName(), "neutron GET ") {
				neutron = s.span
			}
		}
		if neutron == nil {
			return fmt.Errorf("trace %s has %d spans, none from Neutron", traceID, len(trace))
		}
		for p, hops := neutron, 0; ; hops++ {
			parent := hex.EncodeToString(p.GetParentSpanId())
			if parent == hex.EncodeToString(root.span.GetSpanId()) {
				return nil
			}
			next, ok := byID[parent]
			if !ok || hops > 10 {
				return fmt.Errorf("the Neutron span %q does not reach the decision (parent %s not received)", neutron.GetName(), parent)
			}
			p = next
		}
	})
	if neutron.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("Neutron span kind %v, want client", neutron.GetKind())
	}
	var names []string
	for _, s := range trace {
		names = append(names, s.span.GetName())
	}
	t.Logf("trace %s: %v", traceID, names)

	// Neither the secret nor the signature nova receives is in any span of any trace.
	mac := hmac.New(sha256.New, []byte(e2eSecret))
	mac.Write([]byte(v.os.InstanceID))
	signature := hex.EncodeToString(mac.Sum(nil))
	for _, s := range rec.all() {
		for _, kv := range allValues(s) {
			if strings.Contains(kv, e2eSecret) || strings.Contains(kv, signature) {
				t.Errorf("span %s carries the secret or the signature: %s", s.span.GetName(), kv)
			}
		}
	}

	if after := requestsTotal(t, e.extprocAdmin); after < before+1 {
		t.Errorf("%s went from %v to %v over one VM request", decide.MetricRequests, before, after)
	}

	envoyTracingIgnoresTheVM(t, e, rec, port)
}

// The trace context a hostile VM sends: its own trace, sampled, with state, baggage, a forced
// client trace and B3 headers naming the same trace.
const (
	vmTraceID     = "0af7651916cd43dd8448eb211c80319c"
	vmParentID    = "b7ad6b7169203331"
	vmTraceparent = "00-" + vmTraceID + "-" + vmParentID + "-01"
	// envoyExtProcSpan is the name Envoy's gRPC client gives the ext_proc stream's span
	// (source/common/grpc/async_client_impl.cc).
	envoyExtProcSpan = "async envoy.service.ext_proc.v3.ExternalProcessor.Process egress"
)

func vmTraceHeaders() http.Header {
	return http.Header{
		"Traceparent": {vmTraceparent}, "Tracestate": {"vm=chosen"}, "Baggage": {"tenant=victim"},
		"X-Client-Trace-Id": {"vm-forced"}, "B3": {vmTraceID + "-" + vmParentID + "-1"},
		"X-B3-Traceid": {vmTraceID}, "X-B3-Spanid": {vmParentID}, "X-B3-Sampled": {"1"},
	}
}

// envoyTracingIgnoresTheVM: with xds --envoy-tracing-collector (Envoy's OpenTelemetry tracer on
// every listener), a VM request carrying its own traceparent, tracestate, baggage,
// x-client-trace-id and B3 headers gets a decision whose parent is Envoy's ext_proc client span,
// below Envoy's server span, which is the root of a new trace: no span anywhere is in the VM's
// trace, and nova receives Envoy's traceparent and none of the VM's trace headers.
func envoyTracingIgnoresTheVM(t *testing.T, e *env, rec *otlpReceiver, port int) {
	seen := map[string]bool{}
	for _, s := range rec.all() {
		seen[hex.EncodeToString(s.span.GetSpanId())] = true
	}
	e.restartXDS(t, "--envoy-tracing-collector", fmt.Sprintf("127.0.0.1:%d", port))
	v := e.vms["a1"]

	// Until the data plane applied the new listeners, a decision has no parent (Envoy did not
	// trace yet): send again. A decision in the VM's trace fails at once.
	var decision receivedSpan
	for attempt := 0; ; attempt++ {
		if attempt == 20 {
			t.Fatal("no decision with Envoy's parent after 20 requests: Envoy's tracing is not on")
		}
		sent := len(e.recorder.all())
		ownMetadata(t, v, e.curl(t, v, http.MethodGet, "/openstack/latest/meta_data.json", vmTraceHeaders(), nil))
		eventually(t, 30*time.Second, "the decision of the request", func() error {
			for _, s := range rec.all() {
				if s.span.GetName() == decide.SpanDecide && !seen[hex.EncodeToString(s.span.GetSpanId())] {
					decision = s
					return nil
				}
			}
			return fmt.Errorf("no new %s span", decide.SpanDecide)
		})
		seen[hex.EncodeToString(decision.span.GetSpanId())] = true
		if got := hex.EncodeToString(decision.span.GetTraceId()); got == vmTraceID {
			t.Fatalf("the decision is in the VM's trace %s (parent %x): the VM chose it", got, decision.span.GetParentSpanId())
		}
		if len(decision.span.GetParentSpanId()) == 0 {
			continue
		}
		// nova got this request's headers: Envoy's traceparent, in the decision's trace. (A real
		// Envoy's health checks of nova go through the recorder too.)
		var reqs []novaRequest
		for _, q := range e.recorder.all()[sent:] {
			if q.Path == "/openstack/latest/meta_data.json" {
				reqs = append(reqs, q)
			}
		}
		if len(reqs) != 1 {
			t.Fatalf("nova received %d requests for one VM request", len(reqs))
		}
		h := reqs[0].Header
		for _, k := range []string{"Tracestate", "Baggage", "X-Client-Trace-Id", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled"} {
			for _, val := range h.Values(k) {
				if val != "" {
					t.Errorf("nova received the VM's %s: %q", k, val)
				}
			}
		}
		if tp := h.Get("Traceparent"); !strings.HasPrefix(tp, "00-"+hex.EncodeToString(decision.span.GetTraceId())+"-") {
			t.Errorf("nova received traceparent %q, want Envoy's in trace %x", tp, decision.span.GetTraceId())
		}
		break
	}

	// The decision's parent is Envoy's ext_proc client span, itself below Envoy's root server span.
	traceID := hex.EncodeToString(decision.span.GetTraceId())
	var client, server *receivedSpan
	eventually(t, 30*time.Second, "Envoy's spans of the trace at the collector", func() error {
		byID := map[string]receivedSpan{}
		for _, s := range rec.all() {
			if hex.EncodeToString(s.span.GetTraceId()) == traceID {
				byID[hex.EncodeToString(s.span.GetSpanId())] = s
			}
		}
		c, ok := byID[hex.EncodeToString(decision.span.GetParentSpanId())]
		if !ok {
			return fmt.Errorf("the decision's parent %x is not at the collector (%d spans in the trace)", decision.span.GetParentSpanId(), len(byID))
		}
		srv, ok := byID[hex.EncodeToString(c.span.GetParentSpanId())]
		if !ok {
			return fmt.Errorf("the parent %x of %q is not at the collector", c.span.GetParentSpanId(), c.span.GetName())
		}
		client, server = &c, &srv
		return nil
	})
	for _, s := range []*receivedSpan{client, server} {
		if svc := attrString(s.resource, "service.name"); svc != "metaproxy-envoy" {
			t.Errorf("span %q service.name %q, want metaproxy-envoy", s.span.GetName(), svc)
		}
		for _, kv := range allValues(*s) {
			if strings.Contains(kv, "vm-forced") || strings.Contains(kv, "vm=chosen") || strings.Contains(kv, "tenant=victim") {
				t.Errorf("Envoy's span %q carries what the VM sent: %s", s.span.GetName(), kv)
			}
		}
	}
	if client.span.GetName() != envoyExtProcSpan || client.span.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("the decision's parent is %q (%v), want Envoy's %q client span", client.span.GetName(), client.span.GetKind(), envoyExtProcSpan)
	}
	if server.span.GetKind() != tracepb.Span_SPAN_KIND_SERVER || len(server.span.GetParentSpanId()) != 0 {
		t.Errorf("Envoy's request span %q (%v) has parent %x, want a root server span", server.span.GetName(), server.span.GetKind(), server.span.GetParentSpanId())
	}
	for _, s := range rec.all() {
		if hex.EncodeToString(s.span.GetTraceId()) == vmTraceID {
			t.Errorf("span %q (%s) is in the VM's trace", s.span.GetName(), attrString(s.resource, "service.name"))
		}
	}
	t.Logf("trace %s: %s (%s) > %s > %s", traceID, server.span.GetName(), attrString(server.resource, "service.name"), client.span.GetName(), decision.span.GetName())
}
