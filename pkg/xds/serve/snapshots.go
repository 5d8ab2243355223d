package serve

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// Snapshots keeps one snapshot per Envoy node in a go-control-plane snapshot cache (ADS mode, nodes
// keyed by node.id), follows the xDS streams of every node, and pushes again the listeners an
// Envoy rejected.
//
// A node has a snapshot only once a successful poll of the source named it: before that, and for a
// node id the source does not know, go-control-plane keeps the request waiting (its cache opens a
// watch and answers nothing while the node has no snapshot, pkg/cache/v3/simple.go CreateWatch
// and CreateDeltaWatch), so the Envoy keeps what it runs. Whatever is kept for a node the source
// does not know (the cache's status entry, rejection counters) is dropped when its last stream
// closes.
//
// A listener Envoy rejects (its LDS NACK names it, see RejectedListeners) is pushed again after a
// back-off, as a copy that differs only in its metadata (translate.WithAttempt): go-control-plane's
// delta server counts a rejected resource as delivered and its state of the world resends only a
// new snapshot version, so identical content would never be sent again. The retry ends when Envoy
// accepts the listener (an ACK, or a NACK that no longer names it) or the source changes or drops
// it.
//
// The cost of a poll follows what changed, not the size of the fleet (Apply): a node whose
// networks did not change costs a comparison; a network's listeners are translated, encoded and
// hashed once however many nodes serve it; the clusters and the route are encoded once for all
// nodes. Every resource is kept only as its encoding (served), which go-control-plane hands to the
// transport without a copy, and each resource type of a snapshot has its own version, so a new
// network sends nodes their listeners only.
type Snapshots struct {
	cache   *nackGate
	log     *slog.Logger
	backoff Backoff
	clock   Clock

	// applyMu serializes Apply; shared and common are the translate.Shared of the last Apply and
	// its encoded clusters and routes.
	applyMu sync.Mutex
	shared  *translate.Shared
	common  *common

	mu      sync.Mutex
	nodes   map[string]*nodeState // nodes with a snapshot
	streams map[string]int        // open xDS streams per node id, known to the source or not
	// built are the listeners of every network some node's snapshot has (Apply), each built once
	// however many nodes serve it, and dropped when no node has it any more.
	built   map[netKey]*builtNetwork
	retried atomic.Int64 // rejected listeners pushed again
}

// nodeState is what Snapshots keeps for a node with a snapshot.
type nodeState struct {
	common *common
	// nets are the source's networks the listeners were built from (Apply; nil from Set), to tell
	// whether anything changed, and uses their entries in Snapshots.built (uses[i] is nets[i]'s);
	// listeners are those before retries mark them, sorted by name.
	nets      []source.Network
	uses      []*builtNetwork
	listeners []*served
	inSource  bool // named by the last successful poll
	version   string
	seq       uint64 // snapshots set so far
	recent    [8]published
	retries   map[string]*retry // listener name -> its retry
}

// published remembers which snapshot (seq) had a listeners version, to tell which push an ACK or
// NACK is about.
type published struct {
	version string
	seq     uint64
}

// retry is a listener the node's Envoy rejected.
type retry struct {
	network   string
	digest    [sha256.Size]byte // of the content from the source this retry is about (served.digest)
	attempt   uint32            // translate.WithAttempt value served (0: the source's own content)
	failures  int               // consecutive rejections; 0 once accepted
	pushed    uint64            // seq of the snapshot that carried attempt
	waiting   bool              // the back-off timer runs
	stop      func() bool
	lastError string
}

// NodeState describes the snapshot a node has.
type NodeState struct {
	Node, Version string
	Listeners     int
}

// Rejection is a listener an Envoy rejected and cmd/xds is pushing again.
type Rejection struct {
	Node, Network, Listener string
	// Rejections counts the consecutive rejections.
	Rejections int
}

// Option configures Snapshots.
type Option func(*Snapshots)

// WithBackoff sets the back-off of retries (DefaultBackoff without it).
func WithBackoff(b Backoff) Option { return func(s *Snapshots) { s.backoff = b } }

// WithClock sets the clock of the retry timers (real time without it).
func WithClock(c Clock) Option { return func(s *Snapshots) { s.clock = c } }

// NewSnapshots returns an empty snapshot store logging to log.
func NewSnapshots(log *slog.Logger, opts ...Option) *Snapshots {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Snapshots{log: log, backoff: DefaultBackoff, clock: realClock{},
		nodes: map[string]*nodeState{}, streams: map[string]int{}, built: map[netKey]*builtNetwork{}}
	for _, o := range opts {
		o(s)
	}
	inner := cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger(log.With("component", "snapshot-cache")))
	s.cache = newNACKGate(inner, s.backoff, s.clock, log)
	s.cache.retrying = s.retrying
	return s
}

// Nodes returns the state of every node that has a snapshot, sorted by node id.
func (s *Snapshots) Nodes() []NodeState {
	s.mu.Lock()
	out := make([]NodeState, 0, len(s.nodes))
	for n, ns := range s.nodes {
		out = append(out, NodeState{Node: n, Version: ns.version, Listeners: len(ns.listeners)})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Rejections returns the listeners being pushed again, sorted by node and listener.
func (s *Snapshots) Rejections() []Rejection {
	s.mu.Lock()
	var out []Rejection
	for n, ns := range s.nodes {
		for l, r := range ns.retries {
			if r.failures > 0 {
				out = append(out, Rejection{Node: n, Network: r.network, Listener: l, Rejections: r.failures})
			}
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Listener < out[j].Listener
	})
	return out
}

// Retries returns how often a rejected listener was pushed again.
func (s *Snapshots) Retries() int64 { return s.retried.Load() }

// Cache returns the snapshot cache the xDS server serves from.
func (s *Snapshots) Cache() cache.SnapshotCache { return s.cache }

// Version returns the version of node's current snapshot ("" when it has none).
func (s *Snapshots) Version(node string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns := s.nodes[node]; ns != nil {
		return ns.version
	}
	return ""
}

// Set installs res as node's snapshot (the node is now known to the source) unless it has the same
// content as the current one. A snapshot that is not Consistent() (a listener naming a route that
// is not there, a route nobody uses) is refused with an error and the node keeps its previous
// snapshot: with ADS, Envoy would otherwise wait forever for the missing resource. Unlike Apply,
// Set encodes every resource of res each time.
func (s *Snapshots) Set(ctx context.Context, node string, res translate.Resources) (changed bool, err error) {
	cs, err := encodeAll(res.Clusters)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", node, err)
	}
	rs, err := encodeAll(res.Routes)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", node, err)
	}
	ls, err := encodeAll(res.Listeners)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", node, err)
	}
	routes := newResourceSet(rs)
	cm := &common{clusters: newResourceSet(cs), routes: routes, noRoutes: routes}
	return s.set(ctx, node, cm, nodeInput{listeners: ls}, true)
}

// nodeInput is what a node's snapshot is built from: its networks (nil from Set), their entries
// in Snapshots.built, and their listeners, sorted by name.
type nodeInput struct {
	nets      []source.Network
	uses      []*builtNetwork
	listeners []*served
}

// set makes in (with cm) node's snapshot; with inSource false (the source no longer names the
// node) the node keeps a snapshot only while a stream of it is open, so that its Envoy drops the
// listeners; otherwise it is forgotten.
func (s *Snapshots) set(ctx context.Context, node string, cm *common, in nodeInput, inSource bool) (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ns := s.nodes[node]
	if !inSource && s.streams[node] == 0 {
		if ns != nil {
			s.forgetLocked(node)
		}
		return ns != nil, nil
	}
	fresh := ns == nil
	if fresh {
		ns = &nodeState{retries: map[string]*retry{}}
	}
	prev := *ns
	ns.common, ns.nets, ns.uses, ns.listeners, ns.inSource = cm, in.nets, in.uses, in.listeners, inSource
	s.dropStaleRetries(ns)
	changed, err = s.publishLocked(ctx, node, ns)
	if err != nil {
		ns.common, ns.nets, ns.uses, ns.listeners, ns.inSource = prev.common, prev.nets, prev.uses, prev.listeners, prev.inSource
		return false, err
	}
	s.refLocked(cm, in.nets, in.uses, 1)
	s.refLocked(prev.common, prev.nets, prev.uses, -1)
	if fresh {
		s.nodes[node] = ns
	}
	return changed, nil
}

// publishLocked sets the snapshot of node from ns's listeners and retries, if its content changed.
func (s *Snapshots) publishLocked(ctx context.Context, node string, ns *nodeState) (bool, error) {
	listeners := ns.listeners
	if marked := ns.marked(); len(marked) > 0 {
		listeners = slices.Clone(listeners)
		for i, l := range listeners {
			if a, ok := marked[l.name]; ok {
				m, err := withAttempt(l, a)
				if err != nil {
					return false, fmt.Errorf("node %s: %w", node, err)
				}
				listeners[i] = m
			}
		}
	}
	routes := ns.common.noRoutes
	if len(listeners) > 0 {
		routes = ns.common.routes
	}
	lds := newResourceSet(listeners)
	snap := newSnapshot(ns.common.clusters, routes, lds)
	version := snap.version()
	if ns.version == version {
		return false, nil
	}
	if err := snap.consistent(); err != nil {
		return false, fmt.Errorf("node %s: snapshot %s is not consistent, not set: %w", node, version, err)
	}
	if err := s.cache.SetSnapshot(ctx, node, snap); err != nil {
		return false, fmt.Errorf("node %s: set snapshot: %w", node, err)
	}
	ns.version = version
	ns.seq++
	ns.recent[ns.seq%uint64(len(ns.recent))] = published{version: lds.version, seq: ns.seq}
	s.log.Info("snapshot set", "node", node, "version", version,
		"listeners", len(listeners), "routes", len(routes.items), "clusters", len(ns.common.clusters.items))
	return true, nil
}

// withAttempt returns l marked with attempt (translate.WithAttempt), encoded.
func withAttempt(l *served, attempt uint32) (*served, error) {
	full, err := l.listener()
	if err != nil {
		return nil, err
	}
	return encode(translate.WithAttempt(full, attempt))
}

// marked returns the listeners served with an attempt mark.
func (ns *nodeState) marked() map[string]uint32 {
	var out map[string]uint32
	for name, r := range ns.retries {
		if r.attempt > 0 {
			if out == nil {
				out = map[string]uint32{}
			}
			out[name] = r.attempt
		}
	}
	return out
}

// listener returns the node's listener from the source named name, or nil.
func (ns *nodeState) listener(name string) *served {
	i, ok := slices.BinarySearchFunc(ns.listeners, name, func(l *served, name string) int { return strings.Compare(l.name, name) })
	if ok {
		return ns.listeners[i]
	}
	return nil
}

// seqOf returns the seq of the snapshot with version, or the latest seq when it is not among the
// recent ones.
func (ns *nodeState) seqOf(version string) uint64 {
	var best uint64
	for _, p := range ns.recent {
		if p.version == version && p.version != "" && p.seq > best {
			best = p.seq
		}
	}
	if best == 0 {
		return ns.seq
	}
	return best
}

// dropStaleRetries ends the retries of listeners the source dropped or changed (a changed listener
// is pushed as it is; if Envoy rejects it too, a new retry starts).
func (s *Snapshots) dropStaleRetries(ns *nodeState) {
	for name, r := range ns.retries {
		if l := ns.listener(name); l != nil && l.digest == r.digest {
			continue
		}
		if r.stop != nil {
			r.stop()
		}
		delete(ns.retries, name)
	}
}

// retrying reports whether a retry of node's listeners is scheduled.
func (s *Snapshots) retrying(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns := s.nodes[node]; ns != nil {
		for _, r := range ns.retries {
			if r.waiting {
				return true
			}
		}
	}
	return false
}

// Verdict records what node's Envoy said about the response of typeURL with version: accepted
// (nack false) or rejected with detail. Only listener verdicts matter: a rejected listener is
// scheduled to be pushed again after a back-off; a pushed-again listener the verdict does not
// name is accepted. Verdicts about a response older than the retry's push are ignored.
func (s *Snapshots) Verdict(node, typeURL, version, detail string, nack bool) {
	if typeURL != resource.ListenerType {
		return
	}
	var rejected map[string]string
	if nack {
		rejected = RejectedListeners(detail)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ns := s.nodes[node]
	if ns == nil {
		return
	}
	if nack && rejected != nil && strings.HasSuffix(detail, "(truncated)") {
		// Envoy cuts its error detail at 4096 bytes (Config::Utility::truncateGrpcStatusMessage):
		// the listeners it names are only the first it rejected, so every other listener of the
		// node counts as rejected too. Delta would never send the unnamed ones again otherwise.
		for _, l := range ns.listeners {
			if _, ok := rejected[l.name]; !ok {
				rejected[l.name] = "not named in Envoy's truncated error detail"
			}
		}
	}
	seq := ns.seqOf(version)
	for name, r := range ns.retries {
		msg, named := rejected[name]
		delete(rejected, name)
		if r.waiting || seq < r.pushed {
			continue
		}
		if named {
			r.failures++
			r.lastError = msg
			s.scheduleLocked(node, name, r)
		} else if r.failures > 0 {
			s.log.Info("envoy accepted a listener it had rejected", "node", node, "network", r.network,
				"listener", name, "rejections", r.failures)
			r.failures = 0
		}
	}
	for name, msg := range rejected {
		l := ns.listener(name)
		if l == nil {
			s.log.Warn("envoy rejected a listener this node does not have", "node", node, "listener", name, "error", msg)
			continue
		}
		network, _ := translate.ListenerNetwork(name)
		r := &retry{network: network, digest: l.digest, failures: 1, lastError: msg}
		ns.retries[name] = r
		s.scheduleLocked(node, name, r)
	}
}

// scheduleLocked starts r's back-off timer.
func (s *Snapshots) scheduleLocked(node, name string, r *retry) {
	d := s.backoff.Delay(r.failures)
	r.waiting = true
	r.stop = s.clock.AfterFunc(d, func() { s.retry(node, name, r) })
	s.log.Warn("listener rejected by envoy, pushing it again later", "node", node, "network", r.network,
		"listener", name, "rejections", r.failures, "retry_in", d, "error", r.lastError)
}

// retry pushes r's listener again, marked with its next attempt.
func (s *Snapshots) retry(node, name string, r *retry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ns := s.nodes[node]
	if ns == nil || ns.retries[name] != r || !r.waiting {
		return // dropped, changed or forgotten meanwhile
	}
	r.waiting = false
	r.attempt++
	if _, err := s.publishLocked(context.Background(), node, ns); err != nil {
		s.log.Error("push a rejected listener again", "node", node, "listener", name, "error", err)
		return
	}
	r.pushed = ns.seq
	s.retried.Add(1)
	s.log.Info("pushing a rejected listener again", "node", node, "network", r.network, "listener", name, "attempt", r.attempt)
}

// StreamOpened records an xDS stream of node (its first request named the node).
func (s *Snapshots) StreamOpened(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[node]++
}

// StreamClosed records the end of a stream StreamOpened recorded. When the node's last stream
// closes and the source does not name the node, everything kept for it is dropped.
func (s *Snapshots) StreamClosed(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[node]--; s.streams[node] > 0 {
		return
	}
	delete(s.streams, node)
	if ns := s.nodes[node]; ns == nil || !ns.inSource {
		s.forgetLocked(node)
	}
}

// forgetLocked drops node's snapshot, retries and the cache's state of it.
func (s *Snapshots) forgetLocked(node string) {
	if ns := s.nodes[node]; ns != nil {
		for _, r := range ns.retries {
			if r.stop != nil {
				r.stop()
			}
		}
		s.refLocked(ns.common, ns.nets, ns.uses, -1)
		delete(s.nodes, node)
		s.log.Info("node forgotten", "node", node)
	}
	s.cache.ClearSnapshot(node)
}

// ldsErrorPrefix starts the error_detail of Envoy's LDS NACK (LdsApiImpl::onConfigUpdate in
// envoyproxy/envoy source/common/listener_manager/lds_api.cc), followed by one
// "<listener name>: <error>" line per listener it could not add or update; the others are applied.
const ldsErrorPrefix = "Error adding/updating listener(s) "

// RejectedListeners returns the listeners an LDS NACK's error detail names, with Envoy's error for
// each (empty for a detail in another form).
func RejectedListeners(detail string) map[string]string {
	rest, ok := strings.CutPrefix(detail, ldsErrorPrefix)
	if !ok {
		return nil
	}
	out := map[string]string{}
	last := ""
	for _, line := range strings.Split(rest, "\n") {
		if name, msg, ok := strings.Cut(line, ": "); ok && !strings.ContainsAny(name, " \t") && name != "" {
			out[name], last = msg, name
		} else if last != "" && line != "" {
			out[last] += "\n" + line // an error message on several lines
		}
	}
	return out
}

// cacheLogger plugs slog into go-control-plane's logger interface. Its Debugf and Infof lines (one
// or more per watch and response, some listing every resource name) are at debug level, and only
// formatted when that level is on (formatting them anyway took 3% of cmd/xds's CPU while 5000
// Envoys connected).
func cacheLogger(l *slog.Logger) log.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(f string, a ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, fmt.Sprintf(f, a...))
			}
		}
	}
	return log.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}
