package serve

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// TestServedMarshalsToItsEncoding: a served resource marshals (as go-control-plane marshals every
// resource of a response) to the listener's deterministic encoding, sized right, without a copy,
// and an append to what it returns does not write into the kept encoding.
func TestServedMarshalsToItsEncoding(t *testing.T) {
	ls, err := newShared(t).Listeners(nets(netA)[0])
	if err != nil {
		t.Fatal(err)
	}
	s, err := encode(ls[0])
	if err != nil {
		t.Fatal(err)
	}
	want, err := cache.MarshalResource(ls[0])
	if err != nil {
		t.Fatal(err)
	}
	got, err := cache.MarshalResource(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || proto.Size(s) != len(want) {
		t.Fatalf("served marshals to %d bytes (size %d), want the listener's %d", len(got), proto.Size(s), len(want))
	}
	if &got[0] != &s.base[0] {
		t.Error("marshaling a served copied its encoding")
	}
	_ = append(got, 0xff)
	if !bytes.Equal(s.base, want) {
		t.Error("an append to the marshaled bytes changed the kept encoding")
	}
	if cache.GetResourceName(s) != ls[0].GetName() || s.version() != cache.HashResource(want) {
		t.Errorf("name %q version %q, want %q %q", cache.GetResourceName(s), s.version(), ls[0].GetName(), cache.HashResource(want))
	}
	// As a field of another message (no path of go-control-plane does it, but proto must agree).
	a, err := anypb.New(s)
	if err != nil || !bytes.Equal(a.GetValue(), want) || a.GetTypeUrl() != resource.ListenerType {
		t.Errorf("anypb.New: %v, type %s, value equal %v", err, a.GetTypeUrl(), bytes.Equal(a.GetValue(), want))
	}
	if s.decoded.Load() != nil {
		t.Error("marshaling a served decoded it")
	}
}

// TestServedReflectsTheResource: whatever looks at a served through protobuf's reflection sees the
// resource it was encoded from, of the resource's type, never an opaque message: proto.Equal,
// proto.Clone, anypb, protojson, prototext and fmt (what a logger prints) agree with the
// listener translate built; changing it through its reflection panics.
func TestServedReflectsTheResource(t *testing.T) {
	ls, err := newShared(t).Listeners(source.Network{Kind: resolve.KindNetwork, ID: netA,
		NamespacePath: source.NamespacePath(source.DefaultNetnsDir, resolve.KindNetwork, netA), Interface: "tap11111111-11"})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		s, err := encode(l)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(s, l) || !proto.Equal(l, s) {
			t.Errorf("%s: proto.Equal with the listener is false", l.GetName())
		}
		if got := proto.MessageName(s); got != proto.MessageName(l) {
			t.Errorf("%s: message name %s", l.GetName(), got)
		}
		clone, ok := proto.Clone(s).(*listenerv3.Listener)
		if !ok || !proto.Equal(clone, l) {
			t.Errorf("%s: proto.Clone gives %T, equal %v", l.GetName(), proto.Clone(s), ok && proto.Equal(clone, l))
		}
		a, err := anypb.New(s)
		if err != nil {
			t.Fatal(err)
		}
		var back listenerv3.Listener
		if err := a.UnmarshalTo(&back); err != nil || a.GetTypeUrl() != resource.ListenerType || !proto.Equal(&back, l) {
			t.Errorf("%s: anypb.New gives %s (unmarshal: %v)", l.GetName(), a.GetTypeUrl(), err)
		}
		for name, format := range map[string]func(proto.Message) string{
			"protojson": func(m proto.Message) string { return protojson.Format(m) },
			"prototext": func(m proto.Message) string { return prototext.Format(m) },
			"fmt %v":    func(m proto.Message) string { return fmt.Sprint(m) },
		} {
			if got, want := format(s), format(l); got != want || !strings.Contains(got, l.GetName()) {
				t.Errorf("%s: %s gives\n%s\nwant\n%s", l.GetName(), name, got, want)
			}
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: setting a field of a served did not panic", l.GetName())
				}
			}()
			fd := s.ProtoReflect().Descriptor().Fields().ByName("name")
			s.ProtoReflect().Set(fd, protoreflect.ValueOfString("other"))
		}()
		if got, err := cache.MarshalResource(s); err != nil || !bytes.Equal(got, s.encoding()) {
			t.Errorf("%s: after reflective use, marshal gives %d bytes (%v), want the encoding", l.GetName(), len(got), err)
		}
	}
}

// TestGoControlPlaneSnapshotCannotCheckServed: go-control-plane's Snapshot.Consistent finds a
// listener's routes by its Go type (cache.GetResourceReferences switches on *listenerv3.Listener),
// so it sees no route in a served listener and would refuse every snapshot with listeners. That is
// why Snapshots never builds a cache.Snapshot of served resources: its own snapshot checks the
// same rule from the references found when each resource was encoded (snapshot.consistent).
func TestGoControlPlaneSnapshotCannotCheckServed(t *testing.T) {
	sh := newShared(t)
	cm, err := newCommon(sh.Clusters(), sh.Routes())
	if err != nil {
		t.Fatal(err)
	}
	ls, err := buildNetwork(sh, cm, nets(netA)[0])
	if err != nil {
		t.Fatal(err)
	}
	byType := map[resource.Type][]types.Resource{resource.ListenerType: {ls[0]}}
	for _, r := range cm.routes.items {
		byType[resource.RouteType] = append(byType[resource.RouteType], r)
	}
	for _, c := range cm.clusters.items {
		byType[resource.ClusterType] = append(byType[resource.ClusterType], c)
	}
	gcp, err := cache.NewSnapshot("1", byType)
	if err != nil {
		t.Fatal(err)
	}
	if err := gcp.Consistent(); err == nil {
		t.Error("go-control-plane's Consistent accepts served listeners: it now reads their routes, and Snapshots could use it")
	}
	ours := newSnapshot(cm.clusters, cm.routes, newResourceSet(ls))
	if err := ours.consistent(); err != nil {
		t.Errorf("snapshot.consistent of the same resources: %v", err)
	}
}
