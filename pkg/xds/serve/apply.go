package serve

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/trace"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// netKey is what a network's listeners are built from: the network as the source gave it, and the
// common resources (hence the translate.Shared) of the build.
type netKey struct {
	common  *common
	network source.Network
}

// builtNetwork is the listeners of one network, in the snapshots of refs nodes.
type builtNetwork struct {
	listeners []*served
	refs      int
}

// Apply sets the snapshot of every node in nodes from the networks the source gave, doing work
// only for what changed: a node whose networks (and translate.Shared) are those of its current
// snapshot is skipped (nothing is translated, encoded, hashed or set); a network's listeners are
// translated and encoded once, when a node first needs them, and shared by every node that serves
// the same network (the same source.Network: id, namespace, interface, generation) until no node
// has them. Nodes that had a snapshot but are no longer in nodes get an empty one (clusters only)
// while their Envoy is connected, so that it drops the listeners instead of serving stale
// networks, and are forgotten otherwise (an Envoy of a node the source does not know gets
// nothing: it keeps what it has). A node whose translation fails keeps its previous snapshot; all
// failures are returned together. Each node's snapshot is complete when set: never a part of its
// networks.
func (s *Snapshots) Apply(ctx context.Context, sh *translate.Shared, nodes source.Nodes) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if sh != s.shared {
		cm, err := newCommon(sh.Clusters(), sh.Routes())
		if err != nil {
			return fmt.Errorf("shared resources: %w", err)
		}
		s.shared, s.common = sh, cm
	}
	cm := s.common

	type job struct {
		node     string
		nets     []source.Network
		inSource bool
		prev     nodeInput // what the node has, when built with cm
	}
	var jobs []job
	s.mu.Lock()
	for n, nets := range nodes {
		ns := s.nodes[n]
		if ns != nil && ns.common == cm && ns.inSource && sameNetworks(ns.nets, nets) {
			continue
		}
		j := job{node: n, nets: nets, inSource: true}
		if ns != nil && ns.common == cm {
			j.prev = nodeInput{nets: ns.nets, uses: ns.uses}
		}
		jobs = append(jobs, j)
	}
	for n, ns := range s.nodes {
		if _, ok := nodes[n]; !ok && (ns.inSource || ns.common != cm || len(ns.nets) > 0) {
			jobs = append(jobs, job{node: n})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(jobs, func(a, b job) int { return strings.Compare(a.node, b.node) })

	// Spans are children of the caller's (the poll's); with no recording span in ctx, none are made.
	tracer := trace.SpanFromContext(ctx).TracerProvider().Tracer(InstrumentationName)
	var errs []error
	for _, j := range jobs {
		nodeAttr := AttrNode.String(j.node)
		_, build := tracer.Start(ctx, SpanSnapshotBuild, trace.WithAttributes(nodeAttr, AttrNetworks.Int(len(j.nets))))
		in, newly, err := s.listenersOf(sh, cm, j.nets, j.prev)
		if err != nil {
			s.dropUnused(newly)
			err = fmt.Errorf("node %s: translate: %w", j.node, err)
			endSpan(build, err)
			errs = append(errs, err)
			continue
		}
		build.SetAttributes(AttrListeners.Int(len(in.listeners)))
		build.End()
		pctx, push := tracer.Start(ctx, SpanSnapshotPush, trace.WithAttributes(nodeAttr))
		changed, err := s.set(pctx, j.node, cm, in, j.inSource)
		push.SetAttributes(AttrChanged.Bool(changed), AttrVersion.String(s.Version(j.node)))
		endSpan(push, err)
		if err != nil {
			errs = append(errs, err)
			s.dropUnused(newly)
		}
	}
	return errors.Join(errs...)
}

// listenersOf returns the input of a node serving nets that had prev: translating (on all CPUs) and
// encoding the networks no node has yet; newly are those, kept in s.built uncounted until a node's
// snapshot uses them.
func (s *Snapshots) listenersOf(sh *translate.Shared, cm *common, nets []source.Network, prev nodeInput) (in nodeInput, newly []freshNetwork, err error) {
	in.nets, in.uses = nets, make([]*builtNetwork, len(nets))
	// Sources give the networks sorted (source.Normalize): what the node had is found by walking
	// both lists, without looking it up in s.built (a node's change is mostly what it had).
	for i, j := 0, 0; i < len(nets) && j < len(prev.nets); {
		switch c := source.CompareNetworks(nets[i], prev.nets[j]); {
		case c < 0:
			i++
		case c > 0:
			j++
		default:
			if nets[i] == prev.nets[j] {
				in.uses[i] = prev.uses[j]
			}
			i, j = i+1, j+1
		}
	}
	var missing []source.Network
	var at []int
	s.mu.Lock()
	for i, n := range nets {
		if in.uses[i] != nil {
			continue
		}
		if b := s.built[netKey{cm, n}]; b != nil {
			in.uses[i] = b
		} else {
			missing, at = append(missing, n), append(at, i)
		}
	}
	s.mu.Unlock()
	if len(missing) > 0 {
		// Translating takes time: not under s.mu, which the xDS streams' callbacks need. Only
		// Apply adds to s.built (one at a time), so what is missing now is still missing below.
		out, err := buildNetworks(sh, cm, missing)
		if err != nil {
			return nodeInput{}, nil, err
		}
		s.mu.Lock()
		for i, n := range missing {
			k := netKey{cm, n}
			b := s.built[k]
			if b == nil { // else the same network twice in nets
				b = &builtNetwork{listeners: out[i]}
				s.built[k] = b
				newly = append(newly, freshNetwork{k, b})
			}
			in.uses[at[i]] = b
		}
		s.mu.Unlock()
	}
	n := 0
	for _, b := range in.uses {
		n += len(b.listeners)
	}
	in.listeners = make([]*served, 0, n)
	for _, b := range in.uses {
		in.listeners = append(in.listeners, b.listeners...)
	}
	sortServed(in.listeners)
	for i := 1; i < len(in.listeners); i++ {
		if in.listeners[i].name == in.listeners[i-1].name {
			return nodeInput{}, newly, fmt.Errorf("duplicate listener %s", in.listeners[i].name)
		}
	}
	return in, newly, nil
}

// dropUnused drops the networks of fresh no node uses (built for a snapshot that was then refused).
func (s *Snapshots) dropUnused(fresh []freshNetwork) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range fresh {
		if f.b.refs == 0 {
			s.dropLocked(f.k, f.b)
		}
	}
}

// freshNetwork is a network built by the running Apply.
type freshNetwork struct {
	k netKey
	b *builtNetwork
}

// sameNetworks reports whether a and b are the same networks in the same order. A source that
// found no change may give the very same slices (source.File): then nothing is compared.
func sameNetworks(a, b []source.Network) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b)
}

// buildNetworks translates and encodes the listeners of nets, on all CPUs when there are enough
// to share (networks are independent).
func buildNetworks(sh *translate.Shared, cm *common, nets []source.Network) ([][]*served, error) {
	out := make([][]*served, len(nets))
	errs := make([]error, len(nets))
	workers := min(runtime.GOMAXPROCS(0), max(1, len(nets)/8))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(nets); i += workers {
				out[i], errs[i] = buildNetwork(sh, cm, nets[i])
			}
		}()
	}
	wg.Wait()
	for i, n := range nets {
		if errs[i] != nil {
			return nil, fmt.Errorf("%s %s: %w", n.Kind, n.ID, errs[i])
		}
	}
	return out, nil
}

// buildNetwork returns the listeners of n (sorted by name, as translate returns them): stamped
// when n's shape is (stamp.go), else translated.
func buildNetwork(sh *translate.Shared, cm *common, n source.Network) ([]*served, error) {
	if out, ok := cm.stamps.listeners(sh, cm, n); ok {
		return out, nil
	}
	return translateNetwork(sh, cm, n)
}

// translateNetwork translates and encodes the listeners of n.
func translateNetwork(sh *translate.Shared, cm *common, n source.Network) ([]*served, error) {
	ls, err := sh.Listeners(n)
	if err != nil {
		return nil, err
	}
	out := make([]*served, len(ls))
	for i, l := range ls {
		if out[i], err = cm.encodeListener(l); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// refLocked counts (delta 1) or stops counting (-1) a node's use of the built networks uses of
// nets (built with cm), and drops those no node uses.
func (s *Snapshots) refLocked(cm *common, nets []source.Network, uses []*builtNetwork, delta int) {
	for i, b := range uses {
		if b.refs += delta; b.refs <= 0 {
			s.dropLocked(netKey{cm, nets[i]}, b)
		}
	}
}

// dropLocked removes b from s.built if it is still k's entry.
func (s *Snapshots) dropLocked(k netKey, b *builtNetwork) {
	if s.built[k] == b {
		delete(s.built, k)
	}
}
