package serve

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// Callbacks observe the xDS streams: they log and count ACKs, NACKs (with the error Envoy gives)
// and the nodes connected, refuse Envoys older than MinEnvoyVersion, and tell Snapshots which
// nodes have streams and what their Envoys accepted or rejected. Safe for concurrent use.
type Callbacks struct {
	log   *slog.Logger
	snaps *Snapshots

	acks, nacks, requests, responses, tooOld atomic.Int64

	mu      sync.Mutex
	streams map[streamID]*stream
	// ackByType and nackByType count ACKs and NACKs per resource type URL (typeLabel).
	ackByType, nackByType map[string]int64
}

// streamID names a stream: go-control-plane numbers state-of-the-world and delta streams with
// separate counters (pkg/server/sotw/v3/xds.go, pkg/server/delta/v3/server.go), so a fleet that
// mixes both has two streams of each number.
type streamID struct {
	mode string // "sotw" or "delta"
	id   int64
}

// stream is what Callbacks keep of an open stream.
type stream struct {
	node   string // "" until a request names it
	opened bool   // Snapshots.StreamOpened was called
	// sent are the nonces and versions of the last listener responses, to tell which snapshot an
	// ACK or NACK is about (a delta ACK carries only the nonce).
	sent []sentResponse
	// types are the resource type URLs asked for on the stream (at most maxTypesPerStream).
	types map[string]bool
}

type sentResponse struct{ nonce, version string }

// maxSent bounds stream.sent: Envoy answers every response, so only the newest few can be pending.
const maxSent = 16

// maxTypesPerStream bounds the resource types one stream may ask for. go-control-plane keeps a
// watch (with the request) per type URL until the stream ends, whatever the URL; Envoy asks for at
// most the ten xDS types (LDS, RDS, CDS, EDS, SDS, ECDS, VHDS, SRDS, RTDS, LEDS), cmd/xds serves
// three.
const maxTypesPerStream = 16

var _ serverv3.Callbacks = (*Callbacks)(nil)

// MinEnvoyVersion is the oldest Envoy cmd/xds configures. Listeners honour
// network_namespace_filepath from 1.35.0 (envoyproxy/envoy#39517), but before 1.36.0
// (envoyproxy/envoy#41103) Envoy compares listener addresses without the namespace and rejects
// the second 169.254.169.254:80 listener of a node as a duplicate address; 1.36.0 also checks that
// the switch into the namespace succeeded (envoyproxy/envoy#40933).
const MinEnvoyVersion = "1.36.0"

var minEnvoy = [3]uint32{1, 36, 0}

// Stats is a point-in-time copy of the counters.
type Stats struct {
	ACKs, NACKs, Requests, Responses int64
	// TooOld counts streams refused because their Envoy is older than MinEnvoyVersion.
	TooOld int64
	// Streams is the number of open xDS streams; Nodes the distinct node ids on them, sorted.
	Streams int
	Nodes   []string
	// ACKsByType and NACKsByType split ACKs and NACKs by resource type URL (a type never acknowledged
	// or rejected is absent; types cmd/xds does not serve count as "other").
	ACKsByType, NACKsByType map[string]int64
}

// NewCallbacks returns callbacks logging to log and reporting streams and verdicts to snaps.
func NewCallbacks(log *slog.Logger, snaps *Snapshots) *Callbacks {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Callbacks{log: log, snaps: snaps, streams: map[streamID]*stream{}, ackByType: map[string]int64{}, nackByType: map[string]int64{}}
}

// Stats returns the current counters.
func (c *Callbacks) Stats() Stats {
	c.mu.Lock()
	seen := map[string]bool{}
	for _, st := range c.streams {
		if st.node != "" {
			seen[st.node] = true
		}
	}
	st := Stats{Streams: len(c.streams), ACKsByType: maps.Clone(c.ackByType), NACKsByType: maps.Clone(c.nackByType)}
	c.mu.Unlock()
	for n := range seen {
		st.Nodes = append(st.Nodes, n)
	}
	sort.Strings(st.Nodes)
	st.ACKs, st.NACKs = c.acks.Load(), c.nacks.Load()
	st.Requests, st.Responses = c.requests.Load(), c.responses.Load()
	st.TooOld = c.tooOld.Load()
	return st
}

// typeLabel bounds the type URLs counted (a client may send any string) to those cmd/xds serves.
func typeLabel(typeURL string) string {
	switch typeURL {
	case resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType:
		return typeURL
	}
	return "other"
}

func (c *Callbacks) open(sid streamID, typeURL string) error {
	c.mu.Lock()
	c.streams[sid] = &stream{}
	c.mu.Unlock()
	c.log.Debug("xds stream opened", "stream", sid.id, "mode", sid.mode, "type", typeURL)
	return nil
}

func (c *Callbacks) closed(sid streamID, node *corev3.Node) {
	c.mu.Lock()
	st := c.streams[sid]
	delete(c.streams, sid)
	c.mu.Unlock()
	if st != nil && st.opened {
		c.snaps.StreamClosed(st.node)
	}
	c.log.Info("xds stream closed", "stream", sid.id, "mode", sid.mode, "node", node.GetId())
}

// tooOld returns why node's Envoy cannot be configured, or nil. A client that reports no build
// version (not Envoy, e.g. go-control-plane's test clients) is not judged.
func tooOld(node *corev3.Node) error {
	v := node.GetUserAgentBuildVersion().GetVersion()
	if v == nil {
		return nil
	}
	got := [3]uint32{v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch()}
	if slices.Compare(got[:], minEnvoy[:]) >= 0 {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"metaproxy needs Envoy %s or newer, this node runs %d.%d.%d: before 1.36.0 Envoy compares listener addresses "+
			"without their network namespace and rejects the second 169.254.169.254:80 listener as a duplicate; "+
			"upgrade Envoy (no configuration is sent until then)", MinEnvoyVersion, got[0], got[1], got[2])
}

// request records a request: the first one with a node names the stream (and is refused for an
// Envoy older than MinEnvoyVersion); one carrying error_detail is a NACK, one carrying a response
// nonce without error an ACK.
func (c *Callbacks) request(sid streamID, node *corev3.Node, typeURL, nonce, version string, errMsg *string) error {
	id, mode := sid.id, sid.mode
	c.requests.Add(1)
	c.mu.Lock()
	st := c.streams[sid]
	if st == nil { // a request before OnStreamOpen cannot happen; be safe
		st = &stream{}
		c.streams[sid] = st
	}
	if err := st.admit(node, typeURL); err != nil {
		c.mu.Unlock()
		c.log.Warn("xds stream refused", "stream", id, "mode", mode, "node", st.node, "error", err)
		return err
	}
	first := st.node == "" && node.GetId() != ""
	if first {
		st.node = node.GetId()
	}
	nid := st.node
	sent := ""
	if nonce != "" {
		sent = st.take(nonce)
	}
	switch {
	case errMsg != nil:
		c.nackByType[typeLabel(typeURL)]++
	case nonce != "":
		c.ackByType[typeLabel(typeURL)]++
	}
	c.mu.Unlock()
	if first {
		if err := tooOld(node); err != nil {
			c.tooOld.Add(1)
			c.log.Error("refusing an Envoy that is too old", "stream", id, "node", nid, "min_version", MinEnvoyVersion,
				"version", buildVersion(node), "error", err)
			return err
		}
		c.log.Info("envoy connected", "stream", id, "mode", mode, "node", nid, "cluster", node.GetCluster(),
			"user_agent", node.GetUserAgentName(), "version", buildVersion(node))
		c.snaps.StreamOpened(nid)
		c.mu.Lock()
		st.opened = true
		c.mu.Unlock()
	}
	switch {
	case errMsg != nil:
		c.nacks.Add(1)
		var networks []string
		for name := range RejectedListeners(*errMsg) {
			if n, ok := translate.ListenerNetwork(name); ok {
				networks = append(networks, n)
			}
		}
		sort.Strings(networks)
		c.log.Warn("envoy rejected config (NACK)", "node", nid, "stream", id, "type", typeURL, "nonce", nonce,
			"networks", networks, "error", *errMsg)
	case nonce != "":
		c.acks.Add(1)
		c.log.Debug("envoy accepted config (ACK)", "node", nid, "stream", id, "type", typeURL, "version", version)
	}
	if nonce != "" && nid != "" {
		if sent == "" {
			sent = version // state of the world: an ACK names the version it accepted
		}
		detail := ""
		if errMsg != nil {
			detail = *errMsg
		}
		c.snaps.Verdict(nid, typeURL, sent, detail, errMsg != nil)
	}
	return nil
}

// admit checks a request against what its stream said before, before go-control-plane keeps
// anything for it: the first request must name a node id and later ones may omit the node
// (Envoy's set_node_on_first_message_only; in state of the world go-control-plane fills in the
// stream's node) but not name another, and the stream may ask for at most maxTypesPerStream types.
// go-control-plane follows a node change and opens a cache status for each id a stream names,
// which only the stream's first node's end removes: without this, one stream could fill the cache
// with made-up node ids (on a plain-text listener, or with --node-binding none, where no
// NodeAuthorizer sees the requests).
func (st *stream) admit(node *corev3.Node, typeURL string) error {
	switch {
	case st.node == "" && node.GetId() == "":
		return status.Error(codes.InvalidArgument, "the first request of a stream names no node id")
	case st.node != "" && node != nil && node.GetId() != st.node:
		return status.Errorf(codes.InvalidArgument, "node id changed from %q to %q within the stream", st.node, node.GetId())
	}
	if !st.types[typeURL] {
		if len(st.types) == maxTypesPerStream {
			return status.Errorf(codes.ResourceExhausted, "more than %d resource types asked for on one stream", maxTypesPerStream)
		}
		if st.types == nil {
			st.types = map[string]bool{}
		}
		st.types[typeURL] = true
	}
	return nil
}

// buildVersion prints the node's user_agent_build_version ("" when it has none).
func buildVersion(node *corev3.Node) string {
	v := node.GetUserAgentBuildVersion().GetVersion()
	if v == nil {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch())
}

// sentLDS records a listener response.
func (c *Callbacks) sentLDS(sid streamID, typeURL, nonce, version string) {
	if typeURL != resource.ListenerType {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.streams[sid]; st != nil {
		if len(st.sent) == maxSent {
			st.sent = slices.Delete(st.sent, 0, 1)
		}
		st.sent = append(st.sent, sentResponse{nonce: nonce, version: version})
	}
}

// take returns the version of the response with nonce and forgets it and every older one.
func (st *stream) take(nonce string) string {
	for i, s := range st.sent {
		if s.nonce == nonce {
			st.sent = slices.Delete(st.sent, 0, i+1)
			return s.version
		}
	}
	return ""
}

// OnStreamOpen implements sotw.Callbacks.
func (c *Callbacks) OnStreamOpen(_ context.Context, id int64, typeURL string) error {
	return c.open(streamID{"sotw", id}, typeURL)
}

// OnStreamClosed implements sotw.Callbacks.
func (c *Callbacks) OnStreamClosed(id int64, node *corev3.Node) { c.closed(streamID{"sotw", id}, node) }

// maxErrorDetail is the longest NACK error detail cmd/xds logs and parses. Envoy truncates its own
// to 4096 bytes and appends "...(truncated)" (Config::Utility::truncateGrpcStatusMessage in
// envoyproxy/envoy source/common/config/utility.cc, used by its sotw and delta muxes): anything
// longer was not written by Envoy, and is cut so that a client cannot have its text logged and
// parsed by the megabyte.
const maxErrorDetail = 4096 + len("...(truncated)")

// errorDetail returns a NACK's error detail m, bounded.
func errorDetail(m string) *string {
	if len(m) > maxErrorDetail {
		m = m[:maxErrorDetail] + "...(truncated by cmd/xds)"
	}
	return &m
}

// trimNode drops from a request's node what cmd/xds never reads, before go-control-plane keeps the
// node for the life of the stream (the stream's and its watches' requests point at it, and the
// cache's status of the node): Envoy lists every extension compiled into it in the node, a few
// hundred entries that decode to ~110 KB per stream, half a GiB for a replica serving 5000 Envoys
// (loadgen xds --node-extensions). Kept: id, cluster, user agent name and version (logged, checked
// against MinEnvoyVersion) and locality; any other field, present or future, is dropped. A node
// that has nothing else is left as it is: with set_node_on_first_message_only go-control-plane
// gives later requests of the stream the node it already keeps, which is not written to again.
func trimNode(n *corev3.Node) {
	if n == nil {
		return
	}
	kept := &corev3.Node{Id: n.Id, Cluster: n.Cluster, UserAgentName: n.UserAgentName,
		UserAgentVersionType: n.UserAgentVersionType, Locality: n.Locality}
	if proto.Equal(n, kept) {
		return
	}
	proto.Reset(n)
	proto.Merge(n, kept)
}

// OnStreamRequest implements sotw.Callbacks.
func (c *Callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	trimNode(req.GetNode())
	var errMsg *string
	if d := req.GetErrorDetail(); d != nil {
		errMsg = errorDetail(d.GetMessage())
	}
	return c.request(streamID{"sotw", id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), errMsg)
}

// OnStreamResponse implements sotw.Callbacks.
func (c *Callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.responses.Add(1)
	c.sentLDS(streamID{"sotw", id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
	c.log.Debug("xds response sent", "stream", id, "type", resp.GetTypeUrl(), "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
}

// OnDeltaStreamOpen implements delta.Callbacks.
func (c *Callbacks) OnDeltaStreamOpen(_ context.Context, id int64, typeURL string) error {
	return c.open(streamID{"delta", id}, typeURL)
}

// OnDeltaStreamClosed implements delta.Callbacks.
func (c *Callbacks) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	c.closed(streamID{"delta", id}, node)
}

// OnStreamDeltaRequest implements delta.Callbacks.
func (c *Callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	trimNode(req.GetNode())
	var errMsg *string
	if d := req.GetErrorDetail(); d != nil {
		errMsg = errorDetail(d.GetMessage())
	}
	return c.request(streamID{"delta", id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), "", errMsg)
}

// OnStreamDeltaResponse implements delta.Callbacks.
func (c *Callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.responses.Add(1)
	c.sentLDS(streamID{"delta", id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
	c.log.Debug("xds delta response sent", "stream", id, "type", resp.GetTypeUrl(),
		"resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
}

// OnFetchRequest implements rest.Callbacks (REST fetches are not served, only counted).
func (c *Callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	c.requests.Add(1)
	return nil
}

// OnFetchResponse implements rest.Callbacks.
func (c *Callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
	c.responses.Add(1)
}
