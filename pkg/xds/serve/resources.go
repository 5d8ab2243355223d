package serve

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"
)

// served is one resource as the snapshot cache holds it: encoded, hashed and checked for its
// references once, however many nodes' snapshots carry it.
//
// A served is itself the proto.Message handed to go-control-plane, and it is the resource: its
// reflection is the resource's type, and any reflective use (proto.Equal, proto.Clone, protojson,
// prototext, fmt) sees the complete resource, decoded from the encoding the first time it is
// asked for. What go-control-plane does with every resource of every response is marshal it
// (cache.MarshalResource); for a served that is, through protobuf's fast path
// (protoiface.Methods), the kept encoding itself (clusters, routes, listeners translate built),
// or the encoding made again from its stamp and its network's id and interface name (stamp.go):
// no reflection, no encoding of a message. The encoding, or the stamp and those values, is all
// that is kept of the resource: a listener's Go form takes ~1.5 times the memory of its encoding
// (BenchmarkListenerForm, docs/benchmarks.md), and a stamped listener keeps only its values. A
// served is immutable: setting a field through its reflection panics (nothing in go-control-plane
// modifies a resource, pkg/cache/v3's cachedResource).
type served struct {
	// base is the deterministic encoding of the resource or, with stamp, the stamp's (which id and
	// iface are written into).
	base      []byte
	stamp     *stamp
	id, iface string
	typ       protoreflect.MessageType // the resource's type
	name      string
	// digest is the SHA-256 of the encoding; in hex (version) it is cache.HashResource of it.
	digest [sha256.Size]byte
	// refs are the names of the resources of the dependent type this one needs (a listener's
	// routes, a cluster's EDS services), as go-control-plane's GetResourceReferences finds them.
	refs []string
	// decoded is the resource decoded from raw, made on the first reflective use (never on the
	// paths that serve Envoys).
	decoded atomic.Pointer[decodedResource]
}

type decodedResource struct{ m protoreflect.Message }

var _ types.ResourceWithName = (*served)(nil)

// encode returns m as served, with the references go-control-plane finds in it.
func encode(m types.Resource) (*served, error) {
	return encodeWithRefs(m, referenced(m))
}

// encodeWithRefs returns m as served, m referencing refs.
func encodeWithRefs(m types.Resource, refs []string) (*served, error) {
	name := cache.GetResourceName(m)
	b, err := cache.MarshalResource(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", name, err)
	}
	return &served{base: b, typ: m.ProtoReflect().Type(), name: name, digest: sha256.Sum256(b), refs: refs}, nil
}

// encoding returns the resource's encoding: the kept one, or one made from the stamp.
func (s *served) encoding() []byte {
	if s.stamp == nil {
		return s.base
	}
	return s.stamp.enc.appendTo(make([]byte, 0, len(s.base)), s.id, s.iface)
}

// version is the delta resource version of s: cache.HashResource of the encoding, as
// go-control-plane's delta server sends it (RawDeltaResponse hashes what it marshals) and Envoy
// gives it back in initial_resource_versions when it reconnects, so a reconnecting delta client is
// sent only what changed. Made when asked (delta only), not kept.
func (s *served) version() string { return hex.EncodeToString(s.digest[:]) }

// ProtoReflect implements proto.Message.
func (s *served) ProtoReflect() protoreflect.Message { return (*servedReflect)(s) }

// GetName implements types.ResourceWithName (cache.GetResourceName).
func (s *served) GetName() string { return s.name }

// String formats the resource as generated messages do (in prototext, on one line).
func (s *served) String() string { return prototext.MarshalOptions{}.Format(s) }

// full returns the resource decoded (once) from its encoding.
func (s *served) full() protoreflect.Message {
	if d := s.decoded.Load(); d != nil {
		return d.m
	}
	m := s.typ.New()
	if err := proto.Unmarshal(s.encoding(), m.Interface()); err != nil {
		// The encoding was made by proto from a message of this type.
		panic(fmt.Sprintf("decode served %s %s: %v", s.typ.Descriptor().FullName(), s.name, err))
	}
	s.decoded.CompareAndSwap(nil, &decodedResource{m})
	return s.decoded.Load().m
}

// servedReflect is the protoreflect.Message of a served: the resource's type and, decoded, its
// content, but for the fast-path methods proto.Marshal and proto.Size use (servedMethods), which
// give the kept encoding. The methods that would change the resource panic.
type servedReflect served

func (m *servedReflect) s() *served                                 { return (*served)(m) }
func (m *servedReflect) Descriptor() protoreflect.MessageDescriptor { return m.typ.Descriptor() }
func (m *servedReflect) Type() protoreflect.MessageType             { return m.typ }
func (m *servedReflect) New() protoreflect.Message                  { return m.typ.New() }
func (m *servedReflect) Interface() protoreflect.ProtoMessage       { return m.s() }
func (m *servedReflect) IsValid() bool                              { return true }
func (m *servedReflect) ProtoMethods() *protoiface.Methods          { return &servedMethods }
func (m *servedReflect) Has(fd protoreflect.FieldDescriptor) bool   { return m.s().full().Has(fd) }
func (m *servedReflect) Get(fd protoreflect.FieldDescriptor) protoreflect.Value {
	return m.s().full().Get(fd)
}
func (m *servedReflect) NewField(fd protoreflect.FieldDescriptor) protoreflect.Value {
	return m.s().full().NewField(fd)
}
func (m *servedReflect) WhichOneof(od protoreflect.OneofDescriptor) protoreflect.FieldDescriptor {
	return m.s().full().WhichOneof(od)
}
func (m *servedReflect) GetUnknown() protoreflect.RawFields { return m.s().full().GetUnknown() }
func (m *servedReflect) Range(f func(protoreflect.FieldDescriptor, protoreflect.Value) bool) {
	m.s().full().Range(f)
}
func (m *servedReflect) Clear(protoreflect.FieldDescriptor)                   { m.immutable() }
func (m *servedReflect) Set(protoreflect.FieldDescriptor, protoreflect.Value) { m.immutable() }
func (m *servedReflect) Mutable(protoreflect.FieldDescriptor) protoreflect.Value {
	m.immutable()
	return protoreflect.Value{}
}
func (m *servedReflect) SetUnknown(protoreflect.RawFields) { m.immutable() }
func (m *servedReflect) immutable() {
	panic(fmt.Sprintf("served %s %s is immutable", m.typ.Descriptor().FullName(), m.name))
}

// servedMethods encode a served as its kept encoding. Marshaling a whole one into no buffer, what
// proto.Marshal does, returns the encoding itself, capacity-limited so that an append copies; a
// stamped one is made in a buffer of its size (the stamp's); go-control-plane
// only reads it (into an Any, and a hash for delta). There is no Size method on purpose: given
// one, proto.Marshal allocates a buffer of that size before calling Marshal (proto.Size calls
// Marshal instead, which costs nothing here). The encoding came from a complete message, so it is
// initialized. No Unmarshal or Merge: those go through the reflection, which refuses changes.
// Immutable.
var servedMethods = protoiface.Methods{
	Flags: protoiface.SupportMarshalDeterministic,
	Marshal: func(in protoiface.MarshalInput) (protoiface.MarshalOutput, error) {
		s := in.Message.(*servedReflect).s()
		switch {
		case s.stamp != nil:
			return protoiface.MarshalOutput{Buf: s.stamp.enc.appendTo(slices.Grow(in.Buf, len(s.base)), s.id, s.iface)}, nil
		case len(in.Buf) == 0:
			return protoiface.MarshalOutput{Buf: s.base[:len(s.base):len(s.base)]}, nil
		}
		return protoiface.MarshalOutput{Buf: append(in.Buf, s.base...)}, nil
	},
	CheckInitialized: func(protoiface.CheckInitializedInput) (protoiface.CheckInitializedOutput, error) {
		return protoiface.CheckInitializedOutput{}, nil
	},
}

// referenced returns the names of the resources m depends on (go-control-plane's
// GetResourceReferences: a listener's RDS routes, an EDS cluster's service), sorted.
func referenced(m types.Resource) []string {
	var out []string
	for _, names := range cache.GetResourceReferences(map[string]types.ResourceWithTTL{"": {Resource: m}}) {
		for n := range names {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// listener decodes s as a listener.
func (s *served) listener() (*listenerv3.Listener, error) {
	l := &listenerv3.Listener{}
	if err := proto.Unmarshal(s.encoding(), l); err != nil {
		return nil, fmt.Errorf("decode listener %s: %w", s.name, err)
	}
	return l, nil
}

// encodeAll encodes items, sorted by name.
func encodeAll[T types.Resource](items []T) ([]*served, error) {
	out := make([]*served, 0, len(items))
	for _, it := range items {
		s, err := encode(it)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sortServed(out)
	return out, nil
}

func sortServed(items []*served) {
	slices.SortFunc(items, func(a, b *served) int { return strings.Compare(a.name, b.name) })
}

// resourceSet is the resources of one type in a snapshot, with what the snapshot cache asks of
// them. Immutable once built; the clusters and route sets are shared by every node's snapshot.
type resourceSet struct {
	// version is a hash over the digests of the items (of their encodings, which hold their
	// names): the same items give the same version on every node and after a restart.
	version string
	items   []*served // sorted by name
	withTTL map[string]types.ResourceWithTTL

	// plain and versions are built on first use: state of the world asks for plain on every ACK
	// (CreateWatch), only delta for versions (ConstructVersionMap, GetVersionMap).
	plainOnce, versionsOnce sync.Once
	plain                   map[string]types.Resource
	versions                map[string]string
}

// newResourceSet returns the set of items, which must be sorted by name with no name twice.
func newResourceSet(items []*served) *resourceSet {
	b := make([]byte, 0, len(items)*sha256.Size)
	withTTL := make(map[string]types.ResourceWithTTL, len(items))
	for _, it := range items {
		b = append(b, it.digest[:]...)
		withTTL[it.name] = types.ResourceWithTTL{Resource: it}
	}
	sum := sha256.Sum256(b)
	return &resourceSet{version: hex.EncodeToString(sum[:16]), items: items, withTTL: withTTL}
}

func (rs *resourceSet) resources() map[string]types.Resource {
	rs.plainOnce.Do(func() {
		rs.plain = make(map[string]types.Resource, len(rs.items))
		for _, it := range rs.items {
			rs.plain[it.name] = it
		}
	})
	return rs.plain
}

func (rs *resourceSet) versionMap() map[string]string {
	rs.versionsOnce.Do(func() {
		rs.versions = make(map[string]string, len(rs.items))
		for _, it := range rs.items {
			rs.versions[it.name] = it.version()
		}
	})
	return rs.versions
}

// common are the resource sets every node built from one translate.Shared gets: the clusters, and
// the routes of a node with listeners (none without).
type common struct {
	clusters, routes, noRoutes *resourceSet

	// listenerRefs are the routes every listener of the translate.Shared names: its HTTP
	// connection managers share one RDS configuration (translate.Shared.Routes), so go-control-plane's
	// GetResourceReferences is asked once, for the first listener (unpacking every listener's HTTP
	// connection manager again took a third of the time of building it). translate's
	// TestListenersNameTheSharedRoutes checks that invariant with GetResourceReferences itself.
	refsOnce     sync.Once
	listenerRefs []string

	// stamps make the listeners of most networks (stamp.go).
	stamps stamps
}

// listenerType is the type of every listener.
var listenerType = (*listenerv3.Listener)(nil).ProtoReflect().Type()

// encodeListener encodes a listener built from the common's translate.Shared.
func (cm *common) encodeListener(l *listenerv3.Listener) (*served, error) {
	cm.refsOnce.Do(func() { cm.listenerRefs = referenced(l) })
	return encodeWithRefs(l, cm.listenerRefs)
}

// newCommon encodes the clusters and routes once for every node.
func newCommon(clusters []*clusterv3.Cluster, routes []*routev3.RouteConfiguration) (*common, error) {
	cs, err := encodeAll(clusters)
	if err != nil {
		return nil, err
	}
	rs, err := encodeAll(routes)
	if err != nil {
		return nil, err
	}
	return &common{clusters: newResourceSet(cs), routes: newResourceSet(rs), noRoutes: newResourceSet(nil)}, nil
}

// snapshot is one node's snapshot (cache.ResourceSnapshot): the common clusters and routes, and
// the node's listeners. Each type has its own version, so that a change of the listeners is not
// also a new version of the clusters and routes (state of the world would send those again to
// every node, go-control-plane answering every watch whose version differs).
type snapshot struct {
	sets [types.UnknownType]*resourceSet // by types.ResponseType; nil: the type is not served
}

var _ cache.ResourceSnapshot = (*snapshot)(nil)

func newSnapshot(clusters, routes, listeners *resourceSet) *snapshot {
	s := &snapshot{}
	s.sets[types.Cluster], s.sets[types.Route], s.sets[types.Listener] = clusters, routes, listeners
	return s
}

func (s *snapshot) set(typeURL string) *resourceSet {
	if t := cache.GetResponseType(typeURL); t != types.UnknownType {
		return s.sets[t]
	}
	return nil
}

// GetVersion implements cache.ResourceSnapshot.
func (s *snapshot) GetVersion(typeURL string) string {
	if rs := s.set(typeURL); rs != nil {
		return rs.version
	}
	return ""
}

// GetResourcesAndTTL implements cache.ResourceSnapshot; the map must not be modified.
func (s *snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if rs := s.set(typeURL); rs != nil {
		return rs.withTTL
	}
	return nil
}

// GetResources implements cache.ResourceSnapshot; the map must not be modified.
func (s *snapshot) GetResources(typeURL string) map[string]types.Resource {
	if rs := s.set(typeURL); rs != nil {
		return rs.resources()
	}
	return nil
}

// ConstructVersionMap implements cache.ResourceSnapshot: the resource versions were computed when
// the resources were encoded.
func (s *snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap implements cache.ResourceSnapshot; the map must not be modified.
func (s *snapshot) GetVersionMap(typeURL string) map[string]string {
	if rs := s.set(typeURL); rs != nil {
		return rs.versionMap()
	}
	return nil
}

// version is the snapshot's version for logs and metrics: a hash of the versions of its types.
func (s *snapshot) version() string {
	h := sha256.New()
	for _, rs := range s.sets {
		if rs != nil {
			h.Write([]byte(rs.version))
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// consistent is go-control-plane's Snapshot.Consistent for this snapshot: the routes are exactly
// those the listeners name, and the endpoints exactly those the clusters name (the references
// were found by go-control-plane's GetResourceReferences when each resource was encoded). With
// ADS, Envoy would otherwise wait for a resource that never comes.
func (s *snapshot) consistent() error {
	for _, dep := range []struct{ by, of types.ResponseType }{{types.Listener, types.Route}, {types.Cluster, types.Endpoint}} {
		want := map[string]bool{}
		if rs := s.sets[dep.by]; rs != nil {
			for _, it := range rs.items {
				for _, r := range it.refs {
					want[r] = true
				}
			}
		}
		var have []*served
		if rs := s.sets[dep.of]; rs != nil {
			have = rs.items
		}
		typeURL, _ := cache.GetResponseTypeURL(dep.of)
		if len(want) != len(have) {
			return fmt.Errorf("mismatched %q reference and resource lengths: %d referenced, %d present", typeURL, len(want), len(have))
		}
		for _, it := range have {
			if !want[it.name] {
				return fmt.Errorf("inconsistent %q reference: %q not listed", typeURL, it.name)
			}
		}
	}
	return nil
}
