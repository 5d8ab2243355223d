package decide_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
)

const (
	tNet      = "6a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"
	tVM       = "0a1b2c3d-0000-4000-8000-000000000001"
	tProject  = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
	tSecret   = "s3cr3t"
	tVMSig    = "5620efe30f91e1e5d1f6ce3eeb1d755eef49aee6a3b9a627f7130508a61d5aaa"
	neutronGE = "neutron GET /v2.0/ports"
)

// fakeNeutron answers GET /v2.0/ports like Neutron: 10.0.0.5 is tVM's port on tNet, 10.0.0.99
// makes Neutron fail with a 500, anything else has no port. gate, when set, holds every answer
// until it is closed; arrived is told of each request.
type fakeNeutron struct {
	gate    chan struct{}
	arrived chan struct{}
	mu      sync.Mutex
	headers []http.Header
}

func (f *fakeNeutron) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.headers = append(f.headers, r.Header.Clone())
	f.mu.Unlock()
	if f.arrived != nil {
		f.arrived <- struct{}{}
	}
	if f.gate != nil {
		<-f.gate
	}
	q := r.URL.Query()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path != "/v2.0/ports" || q.Get("network_id") != tNet:
		http.Error(w, `{"NeutronError": {"message": "bad query"}}`, http.StatusBadRequest)
	case q.Get("fixed_ips") == "ip_address=10.0.0.99":
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"NeutronError": {"message": "database is down"}}`)
	case q.Get("fixed_ips") == "ip_address=10.0.0.5":
		json.NewEncoder(w).Encode(map[string]any{"ports": []map[string]string{{
			"id": "port1", "device_id": tVM, "project_id": tProject, "tenant_id": tProject, "network_id": tNet}}})
	default:
		fmt.Fprint(w, `{"ports": []}`)
	}
}

// traced is a Decider resolving through the real Neutron resolver, over an otelhttp transport, to
// a fake Neutron, with every span recorded.
type traced struct {
	d       *decide.Decider
	rec     *tracetest.SpanRecorder
	neutron *fakeNeutron
	logs    *bytes.Buffer
}

func newTraced(t *testing.T, neutron *fakeNeutron) *traced {
	t.Helper()
	srv := httptest.NewServer(neutron)
	t.Cleanup(srv.Close)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	client, err := osclient.NewNetworkClient(context.Background(), osclient.Options{
		NeutronURL: srv.URL, WrapTransport: func(base http.RoundTripper) http.RoundTripper {
			return telemetry.HTTPTransport(base, tp, telemetry.Propagator(), "neutron")
		}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.New([]byte(tSecret))
	if err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	d, err := decide.New(resolve.NewNeutron(resolve.FixedClient{C: client}, resolve.NeutronOptions{}), s, answercache.Options{}, slog.New(slog.NewTextHandler(logs, nil)),
		decide.WithTracing(tp))
	if err != nil {
		t.Fatal(err)
	}
	return &traced{d: d, rec: rec, neutron: neutron, logs: logs}
}

// envoyRequest is the request_headers message for a VM at addr, with the request headers vmHeaders
// (key, value, ...) as an Envoy without cmd/xds's forward_rules would pass them on.
func envoyRequest(addr string, vmHeaders ...string) *extprocv3.ProcessingRequest {
	hs := []*corev3.HeaderValue{
		{Key: ":path", RawValue: []byte("/openstack/latest/meta_data.json")},
		{Key: ":method", RawValue: []byte("GET")},
	}
	for i := 0; i+1 < len(vmHeaders); i += 2 {
		hs = append(hs, &corev3.HeaderValue{Key: vmHeaders[i], RawValue: []byte(vmHeaders[i+1])})
	}
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(addr + ":41234")}}},
	}
}

// fromEnvoy is the stream metadata of a listener of tNet with the trace context Envoy's tracer
// adds (W3C traceparent, and more pairs key, value, ...).
func fromEnvoy(traceparent string, more ...string) metadata.MD {
	md := mdNet.Copy()
	md.Set("traceparent", traceparent)
	for i := 0; i+1 < len(more); i += 2 {
		md.Append(more[i], more[i+1])
	}
	return md
}

// traceparent returns a W3C traceparent with the given trace and span ids, sampled.
func traceparent(traceID, spanID string) string { return "00-" + traceID + "-" + spanID + "-01" }

var mdNet = metadata.Pairs(contract.NetworkIDMetadata, tNet)

// node is a span and its children, for comparing trees.
type node struct {
	span     sdktrace.ReadOnlySpan
	children []*node
}

// tree returns the spans of traceID as trees (roots first: spans whose parent was not recorded).
func tree(spans []sdktrace.ReadOnlySpan, traceID trace.TraceID) []*node {
	nodes := map[trace.SpanID]*node{}
	for _, s := range spans {
		if s.SpanContext().TraceID() == traceID {
			nodes[s.SpanContext().SpanID()] = &node{span: s}
		}
	}
	var roots []*node
	for _, s := range spans {
		n, ok := nodes[s.SpanContext().SpanID()]
		if !ok || s.SpanContext().TraceID() != traceID {
			continue
		}
		if p, ok := nodes[s.Parent().SpanID()]; ok {
			p.children = append(p.children, n)
		} else {
			roots = append(roots, n)
		}
	}
	return roots
}

// shape renders a tree as "name(child(grandchild),child)".
func shape(n *node) string {
	var parts []string
	for _, c := range n.children {
		parts = append(parts, shape(c))
	}
	if len(parts) == 0 {
		return n.span.Name()
	}
	return n.span.Name() + "(" + strings.Join(parts, ",") + ")"
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
	m := map[attribute.Key]string{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value.String()
	}
	return m
}

// checkNoSecrets fails if the secret or a signature is in any attribute or event of any span.
func checkNoSecrets(t *testing.T, spans []sdktrace.ReadOnlySpan) {
	t.Helper()
	for _, s := range spans {
		var all []attribute.KeyValue
		all = append(all, s.Attributes()...)
		for _, e := range s.Events() {
			all = append(all, e.Attributes...)
		}
		for _, kv := range all {
			v := kv.Value.String()
			if strings.Contains(v, tSecret) || strings.Contains(v, tVMSig) || strings.EqualFold(string(kv.Key), decide.HeaderSignature) {
				t.Errorf("span %s: attribute %s=%q holds the secret or the signature", s.Name(), kv.Key, v)
			}
		}
	}
}

func TestSpans(t *testing.T) {
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		spanID  = "00f067aa0ba902b7"
	)
	tests := map[string]struct {
		addr      string
		warm      bool // decide once first, so the measured request is a cache hit
		wantShape string
		wantAttrs map[attribute.Key]string // on the decision span
		lookup    string                   // the lookup span's outcome
		neutron   int                      // the Neutron span's HTTP status, 0 when there is none
		errored   bool                     // the decision span's status is Error
	}{
		"hit": {
			addr: "10.0.0.5", warm: true,
			wantShape: decide.SpanDecide + "(" + decide.SpanCacheLookup + ")",
			wantAttrs: map[attribute.Key]string{decide.AttrHTTPStatus: "200", decide.AttrCacheOutcome: "hit", decide.AttrNetworkID: tNet,
				decide.AttrVMAddress: "10.0.0.5", decide.AttrInstanceID: tVM, decide.AttrProjectID: tProject, decide.AttrPortID: "port1"},
			lookup: "hit",
		},
		"miss": {
			addr:      "10.0.0.5",
			wantShape: decide.SpanDecide + "(" + decide.SpanCacheLookup + "(" + neutronGE + "))",
			wantAttrs: map[attribute.Key]string{decide.AttrHTTPStatus: "200", decide.AttrCacheOutcome: "miss", decide.AttrNetworkID: tNet,
				decide.AttrVMAddress: "10.0.0.5", decide.AttrInstanceID: tVM},
			lookup: "miss", neutron: 200,
		},
		"404": {
			addr:      "10.0.0.9",
			wantShape: decide.SpanDecide + "(" + decide.SpanCacheLookup + "(" + neutronGE + "))",
			wantAttrs: map[attribute.Key]string{decide.AttrHTTPStatus: "404", decide.AttrCacheOutcome: "miss", decide.AttrVMAddress: "10.0.0.9"},
			lookup:    "miss", neutron: 200,
		},
		"neutron failure": {
			addr:      "10.0.0.99",
			wantShape: decide.SpanDecide + "(" + decide.SpanCacheLookup + "(" + neutronGE + "))",
			wantAttrs: map[attribute.Key]string{decide.AttrHTTPStatus: "503", decide.AttrCacheOutcome: "miss", decide.AttrVMAddress: "10.0.0.99"},
			lookup:    "miss", neutron: 500, errored: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tr := newTraced(t, &fakeNeutron{})
			if tc.warm {
				tr.d.Decide(metadata.NewIncomingContext(context.Background(), mdNet), envoyRequest(tc.addr))
			}
			_, dec := tr.d.Decide(metadata.NewIncomingContext(context.Background(), fromEnvoy(traceparent(traceID, spanID))), envoyRequest(tc.addr))
			if dec.TraceID.String() != traceID {
				t.Errorf("decision trace id %s, want %s", dec.TraceID, traceID)
			}
			spans := tr.rec.Ended()
			checkNoSecrets(t, spans)
			tid, _ := trace.TraceIDFromHex(traceID)
			roots := tree(spans, tid)
			if len(roots) != 1 {
				t.Fatalf("%d roots in trace %s, want 1: %v", len(roots), traceID, spans)
			}
			root := roots[0]
			if got := shape(root); got != tc.wantShape {
				t.Errorf("span tree %s, want %s", got, tc.wantShape)
			}
			if root.span.Parent().SpanID().String() != spanID || !root.span.Parent().IsRemote() {
				t.Errorf("decision span's parent %v, want Envoy's remote span %s", root.span.Parent(), spanID)
			}
			if root.span.SpanKind() != trace.SpanKindServer {
				t.Errorf("decision span kind %v", root.span.SpanKind())
			}
			got := attrs(root.span)
			for k, want := range tc.wantAttrs {
				if got[k] != want {
					t.Errorf("decision attribute %s = %q, want %q (all: %v)", k, got[k], want, got)
				}
			}
			if (root.span.Status().Code == codes.Error) != tc.errored {
				t.Errorf("decision span status %v, errored want %v", root.span.Status(), tc.errored)
			}
			lookup := root.children[0]
			if o := attrs(lookup.span)[decide.AttrCacheOutcome]; o != tc.lookup {
				t.Errorf("lookup outcome %q, want %q", o, tc.lookup)
			}
			if tc.neutron != 0 {
				n := lookup.children[0].span
				if st := attrs(n)["http.response.status_code"]; st != fmt.Sprint(tc.neutron) || n.SpanKind() != trace.SpanKindClient {
					t.Errorf("Neutron span: status %s kind %v, want %d client (attrs %v)", st, n.SpanKind(), tc.neutron, attrs(n))
				}
				// Neutron received the trace context of its span: the trace goes on server side.
				tr.neutron.mu.Lock()
				h := tr.neutron.headers[len(tr.neutron.headers)-1]
				tr.neutron.mu.Unlock()
				if want := traceparent(traceID, n.SpanContext().SpanID().String()); h.Get("Traceparent") != want {
					t.Errorf("Neutron got traceparent %q, want %q", h.Get("Traceparent"), want)
				}
			}
		})
	}
}

// TestCoalescedSpans: two requests for one VM while Neutron is slow make one Neutron call, under
// the first request's lookup span; the second request's lookup span says coalesced.
func TestCoalescedSpans(t *testing.T) {
	n := &fakeNeutron{gate: make(chan struct{}), arrived: make(chan struct{}, 4)}
	tr := newTraced(t, n)
	first := traceparent("11111111111111111111111111111111", "1111111111111111")
	second := traceparent("22222222222222222222222222222222", "2222222222222222")
	var wg sync.WaitGroup
	wg.Go(func() {
		tr.d.Decide(metadata.NewIncomingContext(context.Background(), fromEnvoy(first)), envoyRequest("10.0.0.5"))
	})
	<-n.arrived // the first request's lookup is at Neutron
	waiting := &doneWatch{Context: context.Background(), asked: make(chan struct{})}
	wg.Go(func() { tr.d.Decide(metadata.NewIncomingContext(waiting, fromEnvoy(second)), envoyRequest("10.0.0.5")) })
	select {
	case <-waiting.asked: // the second request waits for the first one's lookup
	case <-time.After(10 * time.Second):
		t.Fatal("the second request never waited for the first one's lookup")
	}
	close(n.gate)
	wg.Wait()

	spans := tr.rec.Ended()
	checkNoSecrets(t, spans)
	for traceHex, want := range map[string]string{
		"11111111111111111111111111111111": decide.SpanDecide + "(" + decide.SpanCacheLookup + "(" + neutronGE + "))",
		"22222222222222222222222222222222": decide.SpanDecide + "(" + decide.SpanCacheLookup + ")",
	} {
		tid, _ := trace.TraceIDFromHex(traceHex)
		roots := tree(spans, tid)
		if len(roots) != 1 || shape(roots[0]) != want {
			t.Fatalf("trace %s: %d roots, want one %s", traceHex, len(roots), want)
		}
		wantOutcome := "miss"
		if traceHex[0] == '2' {
			wantOutcome = "coalesced"
		}
		if got := attrs(roots[0].children[0].span)[decide.AttrCacheOutcome]; got != wantOutcome {
			t.Errorf("trace %s: lookup outcome %q, want %q", traceHex, got, wantOutcome)
		}
		if got := attrs(roots[0].span)[decide.AttrCacheOutcome]; got != wantOutcome {
			t.Errorf("trace %s: decision outcome %q, want %q", traceHex, got, wantOutcome)
		}
	}
	if len(n.headers) != 1 {
		t.Errorf("%d Neutron calls, want 1", len(n.headers))
	}
}

// doneWatch is a context that tells (asked) when Done is first called. The answer cache calls it
// only once a lookup waits for an answer, having joined the flight of another (or its own): that
// is how the test knows the second request has joined the first one's without sleeping.
type doneWatch struct {
	context.Context
	once  sync.Once
	asked chan struct{}
}

func (c *doneWatch) Done() <-chan struct{} {
	c.once.Do(func() { close(c.asked) })
	return c.Context.Done()
}

// TestTraceContextOnlyFromEnvoy: the decision continues the trace of Envoy's ext_proc client span
// (gRPC metadata) and nothing a VM sent: a traceparent request header never becomes its parent.
func TestTraceContextOnlyFromEnvoy(t *testing.T) {
	const (
		fromMD     = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		fromHeader = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
		vmSpan     = "0807060504030201"
	)
	tests := map[string]struct {
		md, header string
		want       string // trace id; "" for a new one
	}{
		"gRPC metadata, VM header ignored": {md: fromMD, header: fromHeader, want: fromMD},
		"VM header alone: a new trace":     {header: fromHeader},
		"gRPC metadata alone":              {md: fromMD, want: fromMD},
		"none":                             {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tr := newTraced(t, &fakeNeutron{})
			md := mdNet.Copy()
			if tc.md != "" {
				md = fromEnvoy(traceparent(tc.md, "0102030405060708"))
			}
			var vm []string
			if tc.header != "" {
				vm = []string{"traceparent", traceparent(tc.header, vmSpan), "tracestate", "vm=1"}
			}
			_, dec := tr.d.Decide(metadata.NewIncomingContext(context.Background(), md), envoyRequest("10.0.0.5", vm...))
			if !dec.TraceID.IsValid() {
				t.Fatal("no trace id")
			}
			for _, s := range tr.rec.Ended() {
				if s.Name() == decide.SpanDecide && s.Parent().SpanID().String() == vmSpan {
					t.Errorf("the VM's span %s is the decision's parent", vmSpan)
				}
			}
			if tc.want == "" {
				if got := dec.TraceID.String(); got == fromMD || got == fromHeader {
					t.Errorf("trace id %s, want a new one", got)
				}
				return
			}
			if got := dec.TraceID.String(); got != tc.want {
				t.Errorf("trace id %s, want %s", got, tc.want)
			}
		})
	}
}

// TestVMBaggageNeverReachesNeutron: baggage from the VM's request headers, or in the stream's
// metadata, is not sent with the Neutron lookup; only the decision's own trace context is.
func TestVMBaggageNeverReachesNeutron(t *testing.T) {
	const traceID = "dddddddddddddddddddddddddddddddd"
	n := &fakeNeutron{}
	tr := newTraced(t, n)
	md := fromEnvoy(traceparent(traceID, "0102030405060708"), "baggage", "tenant=from-metadata")
	_, dec := tr.d.Decide(metadata.NewIncomingContext(context.Background(), md), envoyRequest("10.0.0.5",
		"baggage", "project=evil,instance=forged", "traceparent", traceparent("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "0807060504030201")))
	if dec.Status != http.StatusOK || dec.Outcome != answercache.Miss {
		t.Fatalf("decision %+v, want a signed miss", dec)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.headers) != 1 {
		t.Fatalf("%d Neutron requests, want 1", len(n.headers))
	}
	h := n.headers[0]
	if b := h.Values("Baggage"); len(b) != 0 {
		t.Errorf("Neutron received baggage %q", b)
	}
	if tp := h.Get("Traceparent"); !strings.Contains(tp, traceID) {
		t.Errorf("Neutron received traceparent %q, want one of trace %s (Envoy's)", tp, traceID)
	}
}

// TestNotForwardedLogNamesTheTrace: the log line of a 404 carries the trace id, with tracing on and
// with tracing off (then the one Envoy sent).
func TestNotForwardedLogNamesTheTrace(t *testing.T) {
	const traceID = "cccccccccccccccccccccccccccccccc"
	tr := newTraced(t, &fakeNeutron{})
	tr.d.RequestHeaders(metadata.NewIncomingContext(context.Background(), fromEnvoy(traceparent(traceID, "0102030405060708"))), envoyRequest("10.0.0.9"))
	if !strings.Contains(tr.logs.String(), "trace_id="+traceID) {
		t.Errorf("tracing on: log lacks the trace id:\n%s", tr.logs)
	}

	var logs bytes.Buffer
	s, _ := sign.New([]byte(tSecret))
	d, err := decide.New(notFound{}, s, answercache.Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	d.RequestHeaders(metadata.NewIncomingContext(context.Background(), fromEnvoy(traceparent(traceID, "0102030405060708"))), envoyRequest("10.0.0.9"))
	if !strings.Contains(logs.String(), "trace_id="+traceID) || !strings.Contains(logs.String(), "status=404") {
		t.Errorf("tracing off: log lacks the trace id:\n%s", logs.String())
	}
}

type notFound struct{}

func (notFound) Resolve(context.Context, resolve.Query) (resolve.Instance, error) {
	return resolve.Instance{}, resolve.ErrNotFound
}
