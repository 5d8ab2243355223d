package serve

import (
	"context"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// Callbacks observe the xDS streams: they log and count ACKs, NACKs (with the error Envoy gives)
// and the nodes connected. Safe for concurrent use.
type Callbacks struct {
	log *slog.Logger

	acks, nacks, requests, responses atomic.Int64

	mu      sync.Mutex
	streams map[int64]string // stream id -> node id ("" until the node is known)
	// ackByType and nackByType count ACKs and NACKs per resource type URL.
	ackByType, nackByType map[string]int64

	// OnNodeConnected, when set, is called with the node id of every stream that names its node,
	// before the request is answered (cmd/xds gives a node the source does not know a snapshot
	// with the clusters only, so that its Envoy is not left waiting).
	OnNodeConnected func(node string)
}

var _ serverv3.Callbacks = (*Callbacks)(nil)

// Stats is a point-in-time copy of the counters.
type Stats struct {
	ACKs, NACKs, Requests, Responses int64
	// Streams is the number of open xDS streams; Nodes the distinct node ids on them, sorted.
	Streams int
	Nodes   []string
	// ACKsByType and NACKsByType split ACKs and NACKs by resource type URL (a type never acknowledged
	// or rejected is absent).
	ACKsByType, NACKsByType map[string]int64
}

// NewCallbacks returns callbacks logging to log.
func NewCallbacks(log *slog.Logger) *Callbacks {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Callbacks{log: log, streams: map[int64]string{}, ackByType: map[string]int64{}, nackByType: map[string]int64{}}
}

// Stats returns the current counters.
func (c *Callbacks) Stats() Stats {
	c.mu.Lock()
	seen := map[string]bool{}
	for _, n := range c.streams {
		if n != "" {
			seen[n] = true
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
	return st
}

func (c *Callbacks) open(id int64, typeURL, mode string) error {
	c.mu.Lock()
	c.streams[id] = ""
	c.mu.Unlock()
	c.log.Debug("xds stream opened", "stream", id, "mode", mode, "type", typeURL)
	return nil
}

func (c *Callbacks) closed(id int64, node *corev3.Node, mode string) {
	c.mu.Lock()
	delete(c.streams, id)
	c.mu.Unlock()
	c.log.Info("xds stream closed", "stream", id, "mode", mode, "node", node.GetId())
}

// request records a request: the first one with a node names the stream; one carrying error_detail
// is a NACK, one carrying a response nonce without error an ACK.
func (c *Callbacks) request(id int64, node *corev3.Node, typeURL, nonce, version string, errMsg *string, mode string) {
	c.requests.Add(1)
	if nid := node.GetId(); nid != "" {
		c.mu.Lock()
		prev, known := c.streams[id]
		c.streams[id] = nid
		c.mu.Unlock()
		if !known || prev == "" {
			c.log.Info("envoy connected", "stream", id, "mode", mode, "node", nid, "cluster", node.GetCluster(),
				"user_agent", node.GetUserAgentName(), "version", node.GetUserAgentBuildVersion().GetVersion())
			if c.OnNodeConnected != nil {
				c.OnNodeConnected(nid)
			}
		}
	}
	c.mu.Lock()
	nid := c.streams[id]
	switch {
	case errMsg != nil:
		c.nackByType[typeURL]++
	case nonce != "":
		c.ackByType[typeURL]++
	}
	c.mu.Unlock()
	switch {
	case errMsg != nil:
		c.nacks.Add(1)
		c.log.Warn("envoy rejected config (NACK)", "node", nid, "stream", id, "type", typeURL, "nonce", nonce, "error", *errMsg)
	case nonce != "":
		c.acks.Add(1)
		c.log.Debug("envoy accepted config (ACK)", "node", nid, "stream", id, "type", typeURL, "version", version)
	}
}

// OnStreamOpen implements sotw.Callbacks.
func (c *Callbacks) OnStreamOpen(_ context.Context, id int64, typeURL string) error {
	return c.open(id, typeURL, "sotw")
}

// OnStreamClosed implements sotw.Callbacks.
func (c *Callbacks) OnStreamClosed(id int64, node *corev3.Node) { c.closed(id, node, "sotw") }

// OnStreamRequest implements sotw.Callbacks.
func (c *Callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	var errMsg *string
	if d := req.GetErrorDetail(); d != nil {
		m := d.GetMessage()
		errMsg = &m
	}
	c.request(id, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), errMsg, "sotw")
	return nil
}

// OnStreamResponse implements sotw.Callbacks.
func (c *Callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.responses.Add(1)
	c.log.Debug("xds response sent", "stream", id, "type", resp.GetTypeUrl(), "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
}

// OnDeltaStreamOpen implements delta.Callbacks.
func (c *Callbacks) OnDeltaStreamOpen(_ context.Context, id int64, typeURL string) error {
	return c.open(id, typeURL, "delta")
}

// OnDeltaStreamClosed implements delta.Callbacks.
func (c *Callbacks) OnDeltaStreamClosed(id int64, node *corev3.Node) { c.closed(id, node, "delta") }

// OnStreamDeltaRequest implements delta.Callbacks.
func (c *Callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	var errMsg *string
	if d := req.GetErrorDetail(); d != nil {
		m := d.GetMessage()
		errMsg = &m
	}
	c.request(id, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), "", errMsg, "delta")
	return nil
}

// OnStreamDeltaResponse implements delta.Callbacks.
func (c *Callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.responses.Add(1)
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
