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
func TestObservability(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rec, port := startOTLPReceiver(t)
	e := setup(t, ctx)
	e.extproc.env = []string{
		fmt.Sprintf("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:%d", port),
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
	}
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
}
