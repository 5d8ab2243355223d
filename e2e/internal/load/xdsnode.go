package load

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
	"github.com/metaproxy/metaproxy/pkg/contract"
)

// Phases of a fleet run: every node gets its full configuration, then one network is added.
const (
	phaseFull = iota
	phaseChanged
	phases
)

// fleetProgress counts the nodes that reached each phase and closes done[phase] when all have.
type fleetProgress struct {
	total   int64
	reached [phases]atomic.Int64
	done    [phases]chan struct{}
	// changeAt is when the change was written (Unix ns, 0 before): resources received from then on
	// are the change's.
	changeAt atomic.Int64
}

func newFleetProgress(nodes int) *fleetProgress {
	p := &fleetProgress{total: int64(nodes)}
	for i := range p.done {
		p.done[i] = make(chan struct{})
	}
	return p
}

func (p *fleetProgress) reach(phase int) {
	if p.reached[phase].Add(1) == p.total {
		close(p.done[phase])
	}
}

// nodeRecorder is one simulated Envoy's configuration, as the stand-in's ADS client applies it
// (xdsclient.Applier), and what its stream carried (a gRPC stream interceptor). It records when the
// node first had each phase's listeners, all bound in the right namespace, with the clusters and
// the routes they name: the moment its Envoy could serve every network.
type nodeRecorder struct {
	id       string
	expect   [phases]map[string]string // listener name -> namespace path
	progress *fleetProgress

	mu        sync.Mutex
	started   time.Time
	clusters  map[string]bool
	eds       []string
	listeners map[string]listenerSeen
	routes    map[string]bool
	firstLDS  int // listeners in the first listener set applied; -1 before
	reached   [phases]time.Time
	rejected  int // updates this node refused (and NACKed), with the last reason
	lastError string
	nacks     int
	streamErr map[string]int
	// Resources received since the change, by type URL; removed names apart (delta).
	changeRes     map[string]int
	changeRemoved int
}

// listenerSeen is what the recorder needs from a listener, decoded once per content.
type listenerSeen struct {
	raw       *anypb.Any
	namespace string
	routes    []string
}

var _ xdsclient.Applier = (*nodeRecorder)(nil)

func newNodeRecorder(id string, before, after map[string]string, p *fleetProgress) *nodeRecorder {
	return &nodeRecorder{
		id: id, expect: [phases]map[string]string{before, after}, progress: p, firstLDS: -1,
		streamErr: map[string]int{}, changeRes: map[string]int{},
	}
}

// Apply implements xdsclient.Applier. Like Envoy, a resource that does not decode rejects the
// update (NACK) and the previous one stays.
func (r *nodeRecorder) Apply(typeURL string, res map[string]*anypb.Any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	switch typeURL {
	case xdsclient.ClusterType:
		err = r.applyClusters(res)
	case xdsclient.ListenerType:
		err = r.applyListeners(res)
	case xdsclient.RouteType:
		routes := make(map[string]bool, len(res))
		for name := range res {
			routes[name] = true
		}
		r.routes = routes
	case xdsclient.EndpointType:
	default:
		err = fmt.Errorf("unexpected resource type %s", typeURL)
	}
	if err != nil {
		r.rejected++
		r.lastError = err.Error()
		return err
	}
	r.check(time.Now())
	return nil
}

func (r *nodeRecorder) applyClusters(res map[string]*anypb.Any) error {
	clusters := make(map[string]bool, len(res))
	var eds []string
	for name, a := range res {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
		clusters[c.GetName()] = true
		if c.GetType() == clusterv3.Cluster_EDS {
			eds = append(eds, cmp.Or(c.GetEdsClusterConfig().GetServiceName(), c.GetName()))
		}
	}
	r.clusters, r.eds = clusters, eds
	return nil
}

func (r *nodeRecorder) applyListeners(res map[string]*anypb.Any) error {
	next := make(map[string]listenerSeen, len(res))
	for name, a := range res {
		// State of the world resends every listener: decode only what changed, as Envoy skips
		// a listener whose configuration hash did not change.
		if old, ok := r.listeners[name]; ok && (old.raw == a || bytes.Equal(old.raw.GetValue(), a.GetValue())) {
			next[name] = old
			continue
		}
		seen, err := decodeListener(name, a)
		if err != nil {
			return err
		}
		next[name] = seen
	}
	r.listeners = next
	if r.firstLDS < 0 {
		r.firstLDS = len(next)
	}
	return nil
}

// decodeListener reads the namespace a listener binds in and the RDS routes its HTTP connection
// managers name.
func decodeListener(name string, a *anypb.Any) (listenerSeen, error) {
	var l listenerv3.Listener
	if err := a.UnmarshalTo(&l); err != nil {
		return listenerSeen{}, fmt.Errorf("listener %s: %w", name, err)
	}
	if l.GetName() != name {
		return listenerSeen{}, fmt.Errorf("listener %s is named %q inside", name, l.GetName())
	}
	seen := listenerSeen{raw: a, namespace: l.GetAddress().GetSocketAddress().GetNetworkNamespaceFilepath()}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			var hcm hcmv3.HttpConnectionManager
			if !f.GetTypedConfig().MessageIs(&hcm) {
				continue
			}
			if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				return listenerSeen{}, fmt.Errorf("listener %s: http connection manager: %w", name, err)
			}
			if rds := hcm.GetRds(); rds != nil {
				seen.routes = append(seen.routes, rds.GetRouteConfigName())
			}
		}
	}
	return seen, nil
}

// Wanted implements xdsclient.Applier: the routes the listeners name, the EDS clusters' services.
func (r *nodeRecorder) Wanted(typeURL string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	switch typeURL {
	case xdsclient.RouteType:
		for _, l := range r.listeners {
			out = append(out, l.routes...)
		}
	case xdsclient.EndpointType:
		out = append(out, r.eds...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// check records the phases whose configuration is now complete.
func (r *nodeRecorder) check(now time.Time) {
	for p := range phases {
		if r.reached[p].IsZero() && len(r.problems(r.expect[p])) == 0 {
			r.reached[p] = now
			r.progress.reach(p)
		}
	}
}

// problems lists what keeps the node from serving every listener of want: a missing cluster,
// listener or route, or a listener bound in the wrong namespace.
func (r *nodeRecorder) problems(want map[string]string) []string {
	var out []string
	for _, c := range []string{contract.NovaClusterName, contract.ExtProcClusterName} {
		if !r.clusters[c] {
			out = append(out, "missing cluster "+c)
		}
	}
	for name, ns := range want {
		l, ok := r.listeners[name]
		switch {
		case !ok:
			out = append(out, "missing listener")
		case l.namespace != ns:
			out = append(out, "listener in the wrong namespace")
		}
		for _, rt := range l.routes {
			if !r.routes[rt] {
				out = append(out, "missing route "+rt)
			}
		}
	}
	return out
}

// intercept is the node's gRPC stream interceptor: it counts what the stream carries.
func (r *nodeRecorder) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		r.streamError(err)
		return nil, err
	}
	return &observedStream{ClientStream: s, r: r}, nil
}

type observedStream struct {
	grpc.ClientStream
	r *nodeRecorder
}

func (s *observedStream) SendMsg(m any) error {
	switch req := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		s.r.request(req.GetErrorDetail() != nil)
	case *discoveryv3.DeltaDiscoveryRequest:
		s.r.request(req.GetErrorDetail() != nil)
	}
	return s.ClientStream.SendMsg(m)
}

func (s *observedStream) RecvMsg(m any) error {
	if err := s.ClientStream.RecvMsg(m); err != nil {
		s.r.streamError(err)
		return err
	}
	s.r.received(m)
	return nil
}

func (r *nodeRecorder) request(nack bool) {
	if !nack {
		return
	}
	r.mu.Lock()
	r.nacks++
	r.mu.Unlock()
}

// streamError counts a broken stream by its gRPC code; the end of the run (cancel) is not one.
func (r *nodeRecorder) streamError(err error) {
	code := status.Code(err)
	if code == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	kind := code.String()
	if errors.Is(err, io.EOF) {
		kind = "EOF"
	}
	r.mu.Lock()
	r.streamErr[kind]++
	r.mu.Unlock()
}

// received counts the resources of a response that arrived after the change was written.
func (r *nodeRecorder) received(m any) {
	at := r.progress.changeAt.Load()
	if at == 0 || time.Now().UnixNano() < at {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch resp := m.(type) {
	case *discoveryv3.DiscoveryResponse:
		r.changeRes[resp.GetTypeUrl()] += len(resp.GetResources())
	case *discoveryv3.DeltaDiscoveryResponse:
		r.changeRes[resp.GetTypeUrl()] += len(resp.GetResources())
		r.changeRemoved += len(resp.GetRemovedResources())
	}
}

// nodeReport is a copy of what a recorder saw, for the fleet's result.
type nodeReport struct {
	started       time.Time
	reached       [phases]time.Time
	expected      int // listeners of the full configuration
	firstLDS      int
	rejected      int
	lastError     string
	nacks         int
	streamErr     map[string]int
	changeRes     map[string]int
	changeRemoved int
	problems      []string // what the node still lacks for the last phase it did not reach
}

func (r *nodeRecorder) report() nodeReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := nodeReport{
		started: r.started, reached: r.reached, expected: len(r.expect[phaseFull]), firstLDS: r.firstLDS,
		rejected: r.rejected, lastError: r.lastError, nacks: r.nacks,
		streamErr: maps.Clone(r.streamErr), changeRes: maps.Clone(r.changeRes), changeRemoved: r.changeRemoved,
	}
	for p := range phases {
		if r.reached[p].IsZero() {
			rep.problems = r.problems(r.expect[p])
			break
		}
	}
	return rep
}
