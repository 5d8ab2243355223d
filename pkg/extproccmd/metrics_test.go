package extproccmd

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/extproc"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
)

// scrape GETs /metrics and returns the families.
func scrape(t *testing.T, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("/metrics: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the series of family name whose labels include want ("k=v" pairs);
// 0 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

// TestMetricsMoveWithRequests runs the command, sends VM requests over gRPC and checks the counters
// on /metrics, scraped over HTTP, move as they should.
func TestMetricsMoveWithRequests(t *testing.T) {
	r := run(t)
	admin, conn, ctx := r.admin, r.dial(t), context.Background()

	ask := func(ip string) { t.Helper(); askVM(t, ctx, conn, demo.NetworkA, ip) }

	before := scrape(t, admin)
	for _, name := range MetricNames() {
		if name == decide.MetricRequests || name == decide.MetricDecisionDuration || name == decide.MetricResolverDuration {
			continue // these have series only once requests were made
		}
		if _, ok := before[name]; !ok {
			t.Errorf("%s is not on /metrics before any request", name)
		}
	}
	if v := value(before, MetricReady); v != 1 {
		t.Errorf("%s = %v, want 1", MetricReady, v)
	}

	ask("10.0.0.5") // miss, 200
	ask("10.0.0.5") // hit, 200
	ask("10.0.0.9") // miss, 404
	ask("10.0.0.9") // hit (negative), 404

	after := scrape(t, admin)
	for _, name := range MetricNames() {
		if _, ok := after[name]; !ok {
			t.Errorf("%s is not on /metrics", name)
		}
	}
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{decide.MetricRequests, []string{"outcome=miss", "status=200"}, 1},
		{decide.MetricRequests, []string{"outcome=hit", "status=200"}, 1},
		{decide.MetricRequests, []string{"outcome=miss", "status=404"}, 1},
		{decide.MetricRequests, []string{"outcome=hit", "status=404"}, 1},
		{decide.MetricCacheLookups, []string{"outcome=hit"}, 2},
		{decide.MetricCacheLookups, []string{"outcome=miss"}, 2},
		{decide.MetricCacheLookups, []string{"outcome=coalesced"}, 0},
		{decide.MetricCacheEntries, nil, 2},
		{decide.MetricDecisionDuration, []string{"outcome=hit"}, 2},
		{decide.MetricDecisionDuration, []string{"outcome=miss"}, 2},
		{decide.MetricResolverLookups, []string{"source=ports_file", "result=found"}, 1},
		{decide.MetricResolverLookups, []string{"source=ports_file", "result=not_found"}, 1},
		{decide.MetricResolverLookups, []string{"source=ports_file", "result=error"}, 0},
		{decide.MetricResolverDuration, []string{"source=ports_file"}, 2},
		{extproc.MetricStreams, nil, 4},
		{extproc.MetricStreamsInFlight, nil, 0},
	}
	for _, w := range want {
		got := value(after, w.name, w.labels...) - value(before, w.name, w.labels...)
		if w.name == decide.MetricCacheEntries || w.name == extproc.MetricStreamsInFlight {
			got = value(after, w.name, w.labels...)
		}
		if got != w.value {
			t.Errorf("%s%v moved by %v, want %v", w.name, w.labels, got, w.value)
		}
	}
}

// askVM sends what Envoy sends for a VM request from ip on network over conn, and returns the
// answer.
func askVM(t *testing.T, ctx context.Context, conn *grpc.ClientConn, network, ip string) *extprocv3.ProcessingResponse {
	t.Helper()
	sctx := metadata.AppendToOutgoingContext(ctx, contract.NetworkIDMetadata, network)
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(ip + ":1234")}}},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end: %v", err)
	}
	return resp
}
