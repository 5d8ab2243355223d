package hcm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"
)

// The HCM's tracing with Envoy's OpenTelemetry tracer (envoy.tracers.opentelemetry), as Envoy 1.36
// does it for an ingress listener without spawn_upstream_span:
//
//   - the decision, ConnectionManagerUtility::mutateTracingRequestHeader
//     (source/common/http/conn_manager_utility.cc): x-client-trace-id forces tracing with
//     client_sampling, x-envoy-force-trace with certainty (only an internal request keeps it), else
//     random_sampling; overall_sampling caps all of them;
//   - the span, Driver::startSpan (source/extensions/tracers/opentelemetry/
//     opentelemetry_tracer_impl.cc): a request with a valid traceparent continues that trace, its
//     sampled flag and tracestate whatever the decision was (span_context_extractor.cc,
//     Tracer::startSpan in tracer.cc); an invalid traceparent gives no span at all; without one a
//     new trace starts, sampled as decided. It is a server span named "ingress";
//   - the ext_proc client span, a child (client kind) of it, whose context is written into the
//     ext_proc stream's gRPC metadata (Grpc::AsyncStreamImpl, source/common/grpc/async_client_impl.cc)
//     and the router writing the span's context into the upstream request (traceparent, tracestate);
//   - sampled spans exported over OTLP/gRPC to the grpc_service's cluster, in batches of 5 or every
//     5 s (the runtime defaults tracing.opentelemetry.min_flush_spans and flush_interval_ms).
//
// Tags are a subset of HttpTracerUtility::finalizeDownstreamSpan's. What the stand-in does not
// model is refused at config time (other tracers, samplers, resource detectors, custom tags,
// verbose, spawn_upstream_span, operation names, the HTTP exporter).

const (
	openTelemetryConfigType = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
	otelMinFlushSpans       = 5
	otelFlushInterval       = 5 * time.Second
	defaultMaxPathTagLength = 256
	// extProcSpanName is the child span Envoy's gRPC client names for the ext_proc stream.
	extProcSpanName = "async envoy.service.ext_proc.v3.ExternalProcessor.Process egress"
	// modelsEnvoyVersion is the Envoy the stand-in models (xdsclient.ModelsEnvoy), its
	// telemetry.sdk.version.
	modelsEnvoyVersion = "1.36.0"
)

// tracingConfig is a parsed HttpConnectionManager.Tracing.
type tracingConfig struct {
	// clientSampling, randomSampling and overallSampling are percentages (default 100).
	clientSampling, randomSampling, overallSampling float64
	maxPathTagLength                                int
	noContextPropagation                            bool
	// tracer is the provider; nil: no provider, so no span (Envoy's null tracer).
	tracer *otelTracer
}

func parseTracing(t *hcmv3.HttpConnectionManager_Tracing) (*tracingConfig, error) {
	if t == nil {
		return nil, nil
	}
	if err := t.ValidateAll(); err != nil {
		return nil, err
	}
	if t.GetVerbose() || len(t.GetCustomTags()) > 0 || t.GetSpawnUpstreamSpan().GetValue() || t.GetOperation() != "" || t.GetUpstreamOperation() != "" {
		return nil, errors.New("tracing verbose, custom_tags, spawn_upstream_span and operation names are not implemented by the stand-in")
	}
	pct := func(p *typev3.Percent) float64 {
		if p == nil {
			return 100
		}
		return p.GetValue()
	}
	c := &tracingConfig{
		clientSampling:       pct(t.GetClientSampling()),
		randomSampling:       pct(t.GetRandomSampling()),
		overallSampling:      pct(t.GetOverallSampling()),
		maxPathTagLength:     defaultMaxPathTagLength,
		noContextPropagation: t.GetNoContextPropagation(),
	}
	if n := t.GetMaxPathTagLength(); n != nil {
		c.maxPathTagLength = int(n.GetValue())
	}
	if p := t.GetProvider(); p != nil {
		var err error
		if c.tracer, err = parseOTelTracer(p); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func parseOTelTracer(p *tracev3.Tracing_Http) (*otelTracer, error) {
	if tu := p.GetTypedConfig().GetTypeUrl(); tu != openTelemetryConfigType {
		return nil, fmt.Errorf("tracer %s (%s) is not implemented by the stand-in (%s only)", p.GetName(), tu, openTelemetryConfigType)
	}
	var oc tracev3.OpenTelemetryConfig
	if err := p.GetTypedConfig().UnmarshalTo(&oc); err != nil {
		return nil, fmt.Errorf("tracer %s: %w", p.GetName(), err)
	}
	if err := oc.ValidateAll(); err != nil {
		return nil, fmt.Errorf("tracer %s: %w", p.GetName(), err)
	}
	if oc.GetHttpService() != nil || oc.GetExporter() != nil || len(oc.GetResourceDetectors()) > 0 || oc.GetSampler() != nil || oc.GetMaxCacheSize() != nil {
		return nil, fmt.Errorf("tracer %s: http_service, exporter, resource_detectors, sampler and max_cache_size are not implemented by the stand-in", p.GetName())
	}
	t := &otelTracer{minFlush: otelMinFlushSpans, flushEvery: otelFlushInterval, scope: &commonpb.InstrumentationScope{}}
	if g := oc.GetGrpcService(); g != nil {
		var err error
		if t.cluster, t.metadata, err = parseGrpcService(g); err != nil {
			return nil, fmt.Errorf("tracer %s: %w", p.GetName(), err)
		}
		t.timeout = g.GetTimeout().AsDuration()
	}
	name := oc.GetServiceName()
	if name == "" {
		name = "unknown_service:envoy"
	}
	t.resource = &resourcepb.Resource{}
	if b := oc.GetSetTelemetrySdkResourceAttributes(); b == nil || b.GetValue() {
		t.resource.Attributes = append(t.resource.Attributes,
			stringKV("telemetry.sdk.language", "cpp"), stringKV("telemetry.sdk.name", "envoy"), stringKV("telemetry.sdk.version", modelsEnvoyVersion))
	}
	if b := oc.GetSetServiceNameResourceAttribute(); b == nil || b.GetValue() {
		t.resource.Attributes = append(t.resource.Attributes, stringKV("service.name", name))
	}
	if b := oc.GetSetInstrumentationScope(); b == nil || b.GetValue() {
		t.scope = &commonpb.InstrumentationScope{Name: "envoy", Version: modelsEnvoyVersion}
	}
	return t, nil
}

// featureEnabled is Envoy's runtime featureEnabled for a percentage: true with probability pct/100.
func featureEnabled(pct float64) bool { return mrand.Float64()*100 < pct }

// decide is the tracing decision for a request whose x-request-id the stand-in set itself (so no
// trace reason is in it yet). It returns the reason as the HCM's tracing stats name it.
func (c *tracingConfig) decide(h Headers) (traced bool, reason string) {
	switch {
	case h.Has("x-client-trace-id") && featureEnabled(c.clientSampling):
		reason = "client_enabled"
	case h.Has("x-envoy-force-trace"):
		reason = "service_forced"
	case featureEnabled(c.randomSampling):
		reason = "random_sampling"
	default:
		return false, "not_traceable"
	}
	if !featureEnabled(c.overallSampling) {
		return false, "not_traceable"
	}
	return true, reason
}

// startTrace makes the tracing decision and starts the request's span (s.span, nil when there is
// none), as ActiveStream::traceRequest does once the route is known and before the filters run.
func (s *Stream) startTrace() {
	c := s.cfg.tracing
	if c == nil {
		return
	}
	traced, reason := c.decide(s.Headers)
	s.env.Stats.Inc("http." + s.cfg.StatPrefix + ".tracing." + reason)
	if c.tracer == nil {
		return
	}
	s.span = c.tracer.startServerSpan(s.Headers, traced)
}

// finishTrace tags the request's span and finishes it (HttpTracerUtility::finalizeDownstreamSpan).
func (s *Stream) finishTrace() {
	sp := s.span
	if sp == nil {
		return
	}
	path := s.Path
	if len(path) > s.cfg.tracing.maxPathTagLength {
		path = path[:s.cfg.tracing.maxPathTagLength]
	}
	sp.tag("component", "proxy")
	sp.tag("http.url", s.Scheme+"://"+s.Authority+path)
	sp.tag("http.method", s.Method)
	sp.tag("http.protocol", s.Proto)
	sp.tag("peer.address", s.DirectRemote.String())
	if v, ok := s.Headers.Get("x-request-id"); ok {
		sp.tag("guid:x-request-id", v)
	}
	if v, ok := s.Headers.Get("x-client-trace-id"); ok {
		sp.tag("guid:x-client-trace-id", v)
	}
	upstream := "-"
	if r := s.Route(); r != nil && r.Cluster != "" {
		upstream = r.Cluster
	}
	sp.tag("upstream_cluster", upstream)
	sp.tag("http.status_code", strconv.Itoa(s.status))
	if s.status == 0 || s.status >= 500 {
		sp.tag("error", "true")
	}
	sp.finish(s.env)
}

// injectTraceContext writes the span's context into h as Envoy's OpenTelemetry Span::injectContext
// does: traceparent and tracestate are set (replacing whatever h had). A nil span writes nothing.
func (sp *span) injectTraceContext(set func(k, v string)) {
	if sp == nil {
		return
	}
	set("traceparent", sp.traceparent())
	set("tracestate", sp.p.GetTraceState())
}

// grpcMetadata adds the span's context to the ext_proc stream's metadata.
func (sp *span) grpcMetadata(md metadata.MD) {
	sp.injectTraceContext(func(k, v string) { md.Set(k, v) })
}

// span is one OpenTelemetry span of Envoy's tracer.
type span struct {
	tracer  *otelTracer
	p       *tracepb.Span
	sampled bool
}

func (sp *span) traceparent() string {
	flags := "00"
	if sp.sampled {
		flags = "01"
	}
	return "00-" + hex.EncodeToString(sp.p.GetTraceId()) + "-" + hex.EncodeToString(sp.p.GetSpanId()) + "-" + flags
}

// tag is Span::setTag: a string attribute, replacing one of the same key.
func (sp *span) tag(k, v string) {
	if k == "" {
		return
	}
	kv := stringKV(k, v)
	for i, a := range sp.p.Attributes {
		if a.GetKey() == k {
			sp.p.Attributes[i] = kv
			return
		}
	}
	sp.p.Attributes = append(sp.p.Attributes, kv)
}

func stringKV(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// child is Span::spawnChild: a client span in the same trace, below sp, sampled as sp is.
func (sp *span) child(name string) *span {
	if sp == nil {
		return nil
	}
	c := &span{tracer: sp.tracer, sampled: sp.sampled, p: &tracepb.Span{
		TraceId: sp.p.GetTraceId(), SpanId: randomID(8), ParentSpanId: sp.p.GetSpanId(), TraceState: sp.p.GetTraceState(),
		Name: name, Kind: tracepb.Span_SPAN_KIND_CLIENT, StartTimeUnixNano: uint64(time.Now().UnixNano()),
	}}
	return c
}

// finish ends the span; a sampled one is sent to the collector.
func (sp *span) finish(env *Env) {
	if sp == nil || sp.p.EndTimeUnixNano != 0 {
		return
	}
	sp.p.EndTimeUnixNano = uint64(time.Now().UnixNano())
	if sp.sampled {
		sp.tracer.send(env, sp.p)
	}
}

func randomID(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// startServerSpan is Driver::startSpan for the request headers h and the HCM's decision traced.
func (t *otelTracer) startServerSpan(h Headers, traced bool) *span {
	sp := &span{tracer: t, sampled: traced, p: &tracepb.Span{
		TraceId: randomID(16), SpanId: randomID(8), Name: "ingress", Kind: tracepb.Span_SPAN_KIND_SERVER,
		StartTimeUnixNano: uint64(time.Now().UnixNano()),
	}}
	tp, ok := h.Get("traceparent")
	if !ok {
		return sp
	}
	traceID, parentID, sampled, err := parseTraceparent(tp)
	if err != nil {
		return nil // Envoy: "Unable to extract span context", a null span.
	}
	sp.p.TraceId, sp.p.ParentSpanId, sp.sampled = traceID, parentID, sampled
	sp.p.TraceState = strings.Join(h.Values("tracestate"), ",")
	return sp
}

// parseTraceparent is SpanContextExtractor::extractSpanContext (span_context_extractor.cc): 55
// characters, four hex fields of 2, 32, 16 and 2 digits, neither id all zeros; bit 0 of the flags
// is sampled. Any version is accepted, as Envoy does.
func parseTraceparent(v string) (traceID, parentID []byte, sampled bool, err error) {
	if len(v) != 55 {
		return nil, nil, false, errors.New("invalid traceparent header length")
	}
	parts := strings.Split(v, "-")
	if len(parts) != 4 || len(parts[0]) != 2 || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		return nil, nil, false, errors.New("invalid traceparent field sizes")
	}
	var b [4][]byte
	for i, p := range parts {
		if b[i], err = hex.DecodeString(p); err != nil {
			return nil, nil, false, errors.New("invalid header hex")
		}
	}
	if allZero(b[1]) || allZero(b[2]) {
		return nil, nil, false, errors.New("invalid trace or parent id")
	}
	return b[1], b[2], b[3][0]&1 == 1, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// otelTracer buffers finished sampled spans and exports them to its cluster.
type otelTracer struct {
	// cluster is the grpc_service's cluster ("" leaves reporting off), timeout its per-call
	// timeout (0: none), metadata its initial_metadata.
	cluster  string
	timeout  time.Duration
	metadata [][2]string
	resource *resourcepb.Resource
	scope    *commonpb.InstrumentationScope
	// minFlush spans trigger an export; otherwise the spans wait at most flushEvery.
	minFlush   int
	flushEvery time.Duration

	mu      sync.Mutex
	pending []*tracepb.Span
	timer   *time.Timer
}

// send queues a finished span and exports the queue when it is full; otherwise a timer exports it
// within flushEvery.
func (t *otelTracer) send(env *Env, sp *tracepb.Span) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending = append(t.pending, sp)
	if len(t.pending) >= t.minFlush {
		go t.export(env, t.takeLocked())
		return
	}
	if t.timer == nil {
		t.timer = time.AfterFunc(t.flushEvery, func() {
			t.mu.Lock()
			spans := t.takeLocked()
			t.mu.Unlock()
			t.export(env, spans)
		})
	}
}

func (t *otelTracer) takeLocked() []*tracepb.Span {
	spans := t.pending
	t.pending = nil
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	return spans
}

// export sends spans in one ExportTraceServiceRequest; a failure drops them, as Envoy does.
func (t *otelTracer) export(env *Env, spans []*tracepb.Span) {
	if len(spans) == 0 || t.cluster == "" {
		return
	}
	up := env.Clusters.Get(t.cluster)
	if up == nil {
		env.Log.Debug("tracing: collector cluster unknown, spans dropped", "cluster", t.cluster, "spans", len(spans))
		return
	}
	conn, err := up.GRPC()
	if err != nil {
		env.Log.Debug("tracing: collector connection", "cluster", t.cluster, "error", err)
		return
	}
	ctx := context.Background()
	if t.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.timeout)
		defer cancel()
	}
	if len(t.metadata) > 0 {
		md := metadata.MD{}
		for _, kv := range t.metadata {
			md.Append(kv[0], kv[1])
		}
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	req := &collectortrace.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   t.resource,
		ScopeSpans: []*tracepb.ScopeSpans{{Scope: t.scope, Spans: spans}},
	}}}
	if _, err := collectortrace.NewTraceServiceClient(conn).Export(ctx, req); err != nil {
		env.Log.Debug("tracing: export failed, spans dropped", "cluster", t.cluster, "spans", len(spans), "error", err)
	}
}

// unsupportedWithTracing rejects the HCM options whose interplay with the tracing decision the
// stand-in does not model: a request id it did not generate itself (Envoy's UUID extension keeps
// a trace reason in x-request-id and reads it back).
func unsupportedWithTracing(m *hcmv3.HttpConnectionManager) error {
	if m.GetRequestIdExtension() != nil || m.GetPreserveExternalRequestId() || (m.GetGenerateRequestId() != nil && !m.GetGenerateRequestId().GetValue()) {
		return errors.New("tracing with request_id_extension, preserve_external_request_id or generate_request_id false is not implemented by the stand-in")
	}
	return nil
}
