package serve

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// InstrumentationName names the tracer and meter of this package.
const InstrumentationName = "github.com/metaproxy/metaproxy/pkg/xds/serve"

// Span names. A poll is one trace: SpanPoll, with SpanSourceRead and, per node, SpanSnapshotBuild
// and SpanSnapshotPush as children.
const (
	// SpanPoll is one poll of the network source and the snapshots it leads to.
	SpanPoll = "metaproxy.xds.poll"
	// SpanSourceRead is the source's answer (Neutron, the namespaces or the networks file).
	SpanSourceRead = "metaproxy.xds.source.read"
	// SpanSnapshotBuild is the translation of one node's networks into resources.
	SpanSnapshotBuild = "metaproxy.xds.snapshot.build"
	// SpanSnapshotPush is the hand-over of one node's snapshot to the snapshot cache, which sends it
	// on the node's open xDS streams (nothing is sent when the content did not change).
	SpanSnapshotPush = "metaproxy.xds.snapshot.push"
)

// Span attribute keys.
const (
	AttrNode      = attribute.Key("metaproxy.xds.node")
	AttrNodes     = attribute.Key("metaproxy.xds.nodes")
	AttrNetworks  = attribute.Key("metaproxy.xds.networks")
	AttrListeners = attribute.Key("metaproxy.xds.listeners")
	AttrVersion   = attribute.Key("metaproxy.xds.snapshot.version")
	AttrChanged   = attribute.Key("metaproxy.xds.snapshot.changed")
)

// Metric names as exported on /metrics by the Prometheus exporter.
const (
	MetricConnectedNodes      = "metaproxy_xds_connected_nodes"
	MetricStreams             = "metaproxy_xds_streams"
	MetricACKs                = "metaproxy_xds_acks_total"
	MetricNACKs               = "metaproxy_xds_nacks_total"
	MetricSnapshotInfo        = "metaproxy_xds_snapshot_info"
	MetricListeners           = "metaproxy_xds_listeners"
	MetricPolls               = "metaproxy_xds_polls_total"
	MetricPollFailures        = "metaproxy_xds_poll_failures_total"
	MetricPollLastSuccessSecs = "metaproxy_xds_poll_last_success_timestamp_seconds"
	MetricReady               = "metaproxy_xds_ready"
	MetricListenerRejections  = "metaproxy_xds_listener_rejections"
	MetricListenerRetries     = "metaproxy_xds_listener_retries_total"
	MetricEnvoyTooOld         = "metaproxy_xds_envoy_too_old_total"
)

// Metric labels.
const (
	LabelTypeURL = "type_url"
	LabelNode    = "node"
	LabelVersion = "version"
	// LabelNetwork and LabelListener name a rejected listener (MetricListenerRejections). Their
	// series exist only while the listener is being pushed again, so their number is bounded by
	// the listeners of the nodes the source knows (never by what clients send).
	LabelNetwork  = "network"
	LabelListener = "listener"
)

// MetricNames lists every metric family Instrument exports.
func MetricNames() []string {
	return []string{MetricConnectedNodes, MetricStreams, MetricACKs, MetricNACKs, MetricSnapshotInfo, MetricListeners,
		MetricPolls, MetricPollFailures, MetricPollLastSuccessSecs, MetricReady,
		MetricListenerRejections, MetricListenerRetries, MetricEnvoyTooOld}
}

// Instrument reports the state of cb, snaps and p on mp with observable instruments, read when the
// metrics are collected (nothing is added to the xDS or poll paths):
//
//   - MetricConnectedNodes, MetricStreams: distinct node ids on open streams, and open streams.
//   - MetricACKs, MetricNACKs{type_url}: configurations accepted and rejected by Envoys.
//   - MetricSnapshotInfo{node,version}: 1 per node with a snapshot, naming its version.
//   - MetricListeners{node}: listeners in the node's snapshot.
//   - MetricPolls, MetricPollFailures: source polls run and failed.
//   - MetricPollLastSuccessSecs: Unix time of the last successful poll, 0 before it.
//   - MetricReady: 1 once a poll succeeded (/readyz answers 200), else 0.
//   - MetricListenerRejections{node,network,listener}: consecutive rejections of a listener
//     cmd/xds is pushing again (absent once Envoy accepted it or the source dropped it).
//   - MetricListenerRetries: rejected listeners pushed again.
//   - MetricEnvoyTooOld: xDS streams refused because their Envoy is older than MinEnvoyVersion.
func Instrument(mp metric.MeterProvider, cb *Callbacks, snaps *Snapshots, p *Poller) error {
	m := mp.Meter(InstrumentationName)
	connected, err1 := m.Int64ObservableGauge("metaproxy.xds.connected_nodes",
		metric.WithDescription("Distinct Envoy node ids with an open xDS stream."))
	streams, err2 := m.Int64ObservableGauge("metaproxy.xds.streams",
		metric.WithDescription("Open xDS streams."))
	acks, err3 := m.Int64ObservableCounter("metaproxy.xds.acks",
		metric.WithDescription("xDS responses acknowledged by Envoys (ACK), by resource type URL."))
	nacks, err4 := m.Int64ObservableCounter("metaproxy.xds.nacks",
		metric.WithDescription("xDS responses rejected by Envoys (NACK, logged with Envoy's error), by resource type URL."))
	info, err5 := m.Int64ObservableGauge("metaproxy.xds.snapshot.info",
		metric.WithDescription("1 per node that has a snapshot; label version is the snapshot's (content-derived) version."))
	listeners, err6 := m.Int64ObservableGauge("metaproxy.xds.listeners",
		metric.WithDescription("Listeners in the node's current snapshot (one per network and IP version)."))
	polls, err7 := m.Int64ObservableCounter("metaproxy.xds.polls",
		metric.WithDescription("Polls of the network source, failed or not."))
	fails, err8 := m.Int64ObservableCounter("metaproxy.xds.poll_failures",
		metric.WithDescription("Polls of the network source that failed (the last good snapshots stay)."))
	last, err9 := m.Float64ObservableGauge("metaproxy.xds.poll.last_success_timestamp", metric.WithUnit("s"),
		metric.WithDescription("Unix time of the last successful poll of the network source; 0 before the first."))
	ready, err10 := m.Int64ObservableGauge("metaproxy.xds.ready",
		metric.WithDescription("1 once a poll of the network source succeeded (/readyz answers 200), else 0."))
	rejections, err11 := m.Int64ObservableGauge("metaproxy.xds.listener.rejections",
		metric.WithDescription("Consecutive rejections (NACKs) of a listener cmd/xds is pushing again with back-off; absent once accepted."))
	retries, err12 := m.Int64ObservableCounter("metaproxy.xds.listener.retries",
		metric.WithDescription("Rejected listeners pushed again."))
	tooOld, err13 := m.Int64ObservableCounter("metaproxy.xds.envoy.too_old",
		metric.WithDescription("xDS streams refused because their Envoy is older than "+MinEnvoyVersion+"."))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7, err8, err9, err10, err11, err12, err13); err != nil {
		return err
	}
	_, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := cb.Stats()
		o.ObserveInt64(connected, int64(len(st.Nodes)))
		o.ObserveInt64(streams, int64(st.Streams))
		for typ, n := range st.ACKsByType {
			o.ObserveInt64(acks, n, metric.WithAttributes(attribute.String(LabelTypeURL, typ)))
		}
		for typ, n := range st.NACKsByType {
			o.ObserveInt64(nacks, n, metric.WithAttributes(attribute.String(LabelTypeURL, typ)))
		}
		for _, ns := range snaps.Nodes() {
			node := attribute.String(LabelNode, ns.Node)
			o.ObserveInt64(info, 1, metric.WithAttributes(node, attribute.String(LabelVersion, ns.Version)))
			o.ObserveInt64(listeners, int64(ns.Listeners), metric.WithAttributes(node))
		}
		o.ObserveInt64(polls, p.Polls())
		o.ObserveInt64(fails, p.Failures())
		secs := 0.0
		if t := p.LastSuccess(); !t.IsZero() {
			secs = float64(t.UnixNano()) / float64(time.Second)
		}
		o.ObserveFloat64(last, secs)
		r := int64(0)
		if p.Ready() {
			r = 1
		}
		o.ObserveInt64(ready, r)
		for _, rj := range snaps.Rejections() {
			o.ObserveInt64(rejections, int64(rj.Rejections), metric.WithAttributes(attribute.String(LabelNode, rj.Node),
				attribute.String(LabelNetwork, rj.Network), attribute.String(LabelListener, rj.Listener)))
		}
		o.ObserveInt64(retries, snaps.Retries())
		o.ObserveInt64(tooOld, st.TooOld)
		return nil
	}, connected, streams, acks, nacks, info, listeners, polls, fails, last, ready, rejections, retries, tooOld)
	return err
}

// endSpan records err (if any) on span and ends it.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
