package serve

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// Snapshots keeps one snapshot per Envoy node in a go-control-plane snapshot cache (ADS mode, nodes
// keyed by node.id).
type Snapshots struct {
	cache cache.SnapshotCache
	log   *slog.Logger

	mu        sync.Mutex
	versions  map[string]string // node id -> version of the snapshot set
	listeners map[string]int    // node id -> listeners in that snapshot
}

// NodeState describes the snapshot a node has.
type NodeState struct {
	Node, Version string
	Listeners     int
}

// NewSnapshots returns an empty snapshot store logging to log.
func NewSnapshots(log *slog.Logger) *Snapshots {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Snapshots{
		cache:     cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger(log.With("component", "snapshot-cache"))),
		log:       log,
		versions:  map[string]string{},
		listeners: map[string]int{},
	}
}

// Nodes returns the state of every node that has a snapshot, sorted by node id.
func (s *Snapshots) Nodes() []NodeState {
	s.mu.Lock()
	out := make([]NodeState, 0, len(s.versions))
	for n, v := range s.versions {
		out = append(out, NodeState{Node: n, Version: v, Listeners: s.listeners[n]})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Cache returns the snapshot cache the xDS server serves from.
func (s *Snapshots) Cache() cache.SnapshotCache { return s.cache }

// Version returns the version of node's current snapshot ("" when it has none).
func (s *Snapshots) Version(node string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.versions[node]
}

// Set installs res as node's snapshot unless it has the same content as the current one. A snapshot
// that is not Consistent() (a listener naming a route that is not there, a route nobody uses) is
// refused with an error and the node keeps its previous snapshot: with ADS, Envoy would otherwise
// wait forever for the missing resource.
func (s *Snapshots) Set(ctx context.Context, node string, res translate.Resources) (changed bool, err error) {
	return s.set(ctx, node, res, false)
}

// set is Set; with ifAbsent it leaves a node that already has a snapshot alone (checked under the
// lock, so that a poll that set the node's real snapshot meanwhile is never overwritten).
func (s *Snapshots) set(ctx context.Context, node string, res translate.Resources, ifAbsent bool) (changed bool, err error) {
	byType := map[resource.Type][]types.Resource{
		resource.ListenerType: toResources(res.Listeners),
		resource.RouteType:    toResources(res.Routes),
		resource.ClusterType:  toResources(res.Clusters),
	}
	version, err := Version(byType)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", node, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.versions[node] == version || (ifAbsent && s.versions[node] != "") {
		return false, nil
	}
	snap, err := cache.NewSnapshot(version, byType)
	if err != nil {
		return false, fmt.Errorf("node %s: new snapshot: %w", node, err)
	}
	if err := snap.Consistent(); err != nil {
		return false, fmt.Errorf("node %s: snapshot %s is not consistent, not set: %w", node, version, err)
	}
	if err := s.cache.SetSnapshot(ctx, node, snap); err != nil {
		return false, fmt.Errorf("node %s: set snapshot: %w", node, err)
	}
	s.versions[node] = version
	s.listeners[node] = len(res.Listeners)
	s.log.Info("snapshot set", "node", node, "version", version,
		"listeners", len(res.Listeners), "routes", len(res.Routes), "clusters", len(res.Clusters))
	return true, nil
}

// EnsureNode gives node a snapshot with the clusters only when it has none yet: an Envoy whose node
// id the source does not (yet) know gets a consistent answer instead of waiting for one.
func (s *Snapshots) EnsureNode(ctx context.Context, sh *translate.Shared, node string) error {
	if s.Version(node) != "" {
		return nil
	}
	res, err := sh.Node(nil)
	if err != nil {
		return fmt.Errorf("node %s: translate: %w", node, err)
	}
	_, err = s.set(ctx, node, res, true)
	return err
}

// Apply translates and sets the snapshot of every node in nodes. Nodes that had a snapshot but are
// no longer in nodes get an empty one (clusters only), so that their Envoy drops the listeners
// instead of serving stale networks. A node whose translation fails keeps its previous snapshot;
// all failures are returned together.
func (s *Snapshots) Apply(ctx context.Context, sh *translate.Shared, nodes source.Nodes) error {
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	s.mu.Lock()
	for n := range s.versions {
		if _, ok := nodes[n]; !ok {
			names = append(names, n)
		}
	}
	s.mu.Unlock()
	sort.Strings(names)

	// Spans are children of the caller's (the poll's); with no recording span in ctx, none are made.
	tracer := trace.SpanFromContext(ctx).TracerProvider().Tracer(InstrumentationName)
	var errs []error
	for _, node := range names {
		nodeAttr := AttrNode.String(node)
		_, build := tracer.Start(ctx, SpanSnapshotBuild, trace.WithAttributes(nodeAttr, AttrNetworks.Int(len(nodes[node]))))
		res, err := sh.Node(nodes[node])
		if err != nil {
			err = fmt.Errorf("node %s: translate: %w", node, err)
			endSpan(build, err)
			errs = append(errs, err)
			continue
		}
		build.SetAttributes(AttrListeners.Int(len(res.Listeners)))
		build.End()
		pctx, push := tracer.Start(ctx, SpanSnapshotPush, trace.WithAttributes(nodeAttr))
		changed, err := s.Set(pctx, node, res)
		push.SetAttributes(AttrChanged.Bool(changed), AttrVersion.String(s.Version(node)))
		endSpan(push, err)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Version returns a version derived from the content of the resources: a SHA-256 (first 16 bytes,
// hex) over the SHA-256 of every resource's deterministic encoding, in type and name order. The same
// input always gives the same version, so a poll that finds nothing new sends nothing. Resources
// are encoded on all CPUs.
func Version(byType map[resource.Type][]types.Resource) (string, error) {
	typs := make([]string, 0, len(byType))
	for t := range byType {
		typs = append(typs, t)
	}
	sort.Strings(typs)
	h := sha256.New()
	for _, t := range typs {
		items := make([]types.Resource, len(byType[t]))
		copy(items, byType[t])
		sort.Slice(items, func(i, j int) bool { return cache.GetResourceName(items[i]) < cache.GetResourceName(items[j]) })
		digests, err := digestAll(items)
		if err != nil {
			return "", fmt.Errorf("%s: %w", t, err)
		}
		h.Write([]byte(t))
		h.Write([]byte{0})
		for _, d := range digests {
			h.Write(d[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

func digestAll(items []types.Resource) ([][sha256.Size]byte, error) {
	out := make([][sha256.Size]byte, len(items))
	errs := make([]error, runtime.GOMAXPROCS(0))
	workers := min(len(errs), max(1, len(items)/256))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opts := proto.MarshalOptions{Deterministic: true}
			var buf []byte
			for i := w; i < len(items); i += workers {
				var err error
				if buf, err = opts.MarshalAppend(buf[:0], items[i]); err != nil {
					errs[w] = fmt.Errorf("encode %s: %w", cache.GetResourceName(items[i]), err)
					return
				}
				out[i] = sha256.Sum256(buf)
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func toResources[T types.Resource](items []T) []types.Resource {
	out := make([]types.Resource, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}

// cacheLogger plugs slog into go-control-plane's logger interface.
func cacheLogger(l *slog.Logger) log.Logger {
	return log.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		InfoFunc:  func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		WarnFunc:  func(f string, a ...any) { l.Warn(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { l.Error(fmt.Sprintf(f, a...)) },
	}
}
