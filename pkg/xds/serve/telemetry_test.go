package serve

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// recordSpans gives the harness's poller a tracer whose spans the returned recorder keeps.
func recordSpans(t *testing.T, h *harness) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	h.poller.Tracer = tp.Tracer(InstrumentationName)
	return rec
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// TestPollSpans: a poll is one trace, the source read and each node's build and push its children,
// with the node, listener count, version and whether it changed.
func TestPollSpans(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	rec := recordSpans(t, h)
	h.src.set(source.Nodes{"n1": nets(netA, netB), "n2": nets(netB)}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	var root sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == SpanPoll {
			root = s
		}
	}
	if root == nil {
		t.Fatalf("no %s span among %d", SpanPoll, len(spans))
	}
	if a := attrs(root); a[AttrNodes].AsInt64() != 2 || a[AttrNetworks].AsInt64() != 3 {
		t.Errorf("poll attributes %v, want 2 nodes and 3 networks", a)
	}
	type child struct {
		Name, Node string
		Listeners  int64
		Changed    bool
	}
	var got []child
	for _, s := range spans {
		if s == root {
			continue
		}
		if s.Parent().SpanID() != root.SpanContext().SpanID() || s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("span %s is not a child of the poll", s.Name())
		}
		a := attrs(s)
		got = append(got, child{s.Name(), a[AttrNode].AsString(), a[AttrListeners].AsInt64(), a[AttrChanged].AsBool()})
		if s.Name() == SpanSnapshotPush {
			if v := a[AttrVersion].AsString(); v == "" || v != h.snaps.Version(a[AttrNode].AsString()) {
				t.Errorf("push span of %s: version %q, want the node's %q", a[AttrNode].AsString(), v, h.snaps.Version(a[AttrNode].AsString()))
			}
		}
	}
	// Both nodes' networks have an IPv4 listener only (no interface known, so no IPv6 listener).
	want := []child{
		{Name: SpanSourceRead},
		{Name: SpanSnapshotBuild, Node: "n1", Listeners: 2},
		{Name: SpanSnapshotPush, Node: "n1", Changed: true},
		{Name: SpanSnapshotBuild, Node: "n2", Listeners: 1},
		{Name: SpanSnapshotPush, Node: "n2", Changed: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("children of the poll span (-want +got):\n%s", diff)
	}

	// The same answer again: pushes say nothing changed.
	rec.Reset()
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, s := range rec.Ended() {
		if s.Name() == SpanSnapshotPush && attrs(s)[AttrChanged].AsBool() {
			t.Errorf("push span of %s says changed on an identical poll", attrs(s)[AttrNode].AsString())
		}
	}
}

// TestFailedPollSpan: a source error marks the poll and the read as errors; nothing is built.
func TestFailedPollSpan(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	rec := recordSpans(t, h)
	h.src.set(nil, errors.New("neutron: 503"))
	if err := h.poller.Once(t.Context()); err == nil {
		t.Fatal("poll with a failing source succeeded")
	}
	var names []string
	for _, s := range rec.Ended() {
		names = append(names, s.Name())
		if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "neutron: 503") {
			t.Errorf("span %s status %v, want the source error", s.Name(), s.Status())
		}
	}
	if diff := cmp.Diff([]string{SpanSourceRead, SpanPoll}, names); diff != "" {
		t.Errorf("spans (-want +got):\n%s", diff)
	}
}

// scrape GETs url and returns the metric families.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %s: %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// series returns the values of family name by their labels (as "k=v,k=v", sorted by name).
func series(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	for _, m := range fams[name].GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			if strings.HasPrefix(l.GetName(), "otel_scope_") {
				continue
			}
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		v := m.GetGauge().GetValue()
		if m.GetCounter() != nil {
			v = m.GetCounter().GetValue()
		}
		out[strings.Join(labels, ",")] = v
	}
	return out
}

// TestMetricsOverHTTP drives the server with go-control-plane's ADS client and checks, on /metrics
// scraped over HTTP, that connected nodes, ACKs and NACKs by type, snapshot versions, listeners
// and poll counters follow.
func TestMetricsOverHTTP(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	h := startWith(t, harnessOptions{initial: source.Nodes{"n1": nets(netA)}, poll: true, clock: &fakeClock{}})
	tel, err := telemetry.New(t.Context(), telemetry.Options{ServiceName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	if err := Instrument(tel.MeterProvider, h.cb, h.snaps, h.poller); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.MetricsHandler())
	t.Cleanup(srv.Close)
	url := srv.URL + "/metrics"

	before := scrape(t, url)
	for name, want := range map[string]map[string]float64{
		MetricConnectedNodes: {"": 0},
		MetricPolls:          {"": 1},
		MetricPollFailures:   {"": 0},
		MetricReady:          {"": 1},
		MetricListeners:      {"node=n1": 1},
		MetricSnapshotInfo:   {"node=n1,version=" + h.snaps.Version("n1"): 1},
	} {
		if diff := cmp.Diff(want, series(before, name)); diff != "" {
			t.Errorf("before any Envoy: %s (-want +got):\n%s", name, diff)
		}
	}
	if last := series(before, MetricPollLastSuccessSecs)[""]; last <= 0 {
		t.Errorf("%s = %v after a successful poll, want a Unix time", MetricPollLastSuccessSecs, last)
	}
	if len(series(before, MetricACKs)) != 0 {
		t.Errorf("%s before any Envoy: %v", MetricACKs, series(before, MetricACKs))
	}

	// An Envoy connects, accepts the listeners, then rejects the next version.
	c := connectAndAck(t, h, &corev3.Node{Id: "n1"}, resource.ListenerType)
	h.src.set(source.Nodes{"n1": nets(netA, netB)}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Nack(envoyNACK(v4(netB), "cannot bind '169.254.169.254:80': Address already in use")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ACK and NACK counted", func() bool { st := h.cb.Stats(); return st.ACKs == 1 && st.NACKs == 1 })
	eventually(t, "the rejected listener recorded", func() bool { return len(h.snaps.Rejections()) == 1 })
	h.src.set(nil, errors.New("neutron: 503"))
	if err := h.poller.Once(t.Context()); err == nil {
		t.Fatal("poll with a failing source succeeded")
	}

	after := scrape(t, url)
	for name, want := range map[string]map[string]float64{
		MetricConnectedNodes:     {"": 1},
		MetricStreams:            {"": 1},
		MetricACKs:               {"type_url=" + resource.ListenerType: 1},
		MetricNACKs:              {"type_url=" + resource.ListenerType: 1},
		MetricPolls:              {"": 3},
		MetricPollFailures:       {"": 1},
		MetricListeners:          {"node=n1": 2},
		MetricListenerRejections: {"listener=" + v4(netB) + ",network=" + netB + ",node=n1": 1},
		MetricListenerRetries:    {"": 0},
		MetricEnvoyTooOld:        {"": 0},
		// Only the current version is reported: the previous one's series is gone.
		MetricSnapshotInfo: {"node=n1,version=" + h.snaps.Version("n1"): 1},
	} {
		if diff := cmp.Diff(want, series(after, name)); diff != "" {
			t.Errorf("after ACK, NACK and a failed poll: %s (-want +got):\n%s", name, diff)
		}
	}
	for _, n := range MetricNames() {
		if _, ok := after[n]; !ok {
			t.Errorf("%s not on /metrics", n)
		}
	}
}
