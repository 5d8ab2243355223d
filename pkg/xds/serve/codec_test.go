package serve

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestCodecRefersToResources: a state-of-the-world response is encoded with its resources' values
// referred to, not copied, and what gRPC sends decodes, with proto's own parser, to the response:
// for the listeners, clusters and route of a real snapshot and for the edge cases of the encoding.
func TestCodecRefersToResources(t *testing.T) {
	s := NewSnapshots(nil)
	if err := s.Apply(context.Background(), newShared(t), fleet(1, 20, true)); err != nil {
		t.Fatal(err)
	}
	var cases []*discoveryv3.DiscoveryResponse
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.RouteType} {
		resp, err := s.Cache().Fetch(context.Background(), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-00000"}, TypeUrl: typ})
		if err != nil {
			t.Fatal(err)
		}
		out, err := resp.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		out.Nonce = "7"
		cases = append(cases, out)
	}
	unknown := &discoveryv3.DiscoveryResponse{VersionInfo: "v", Resources: []*anypb.Any{{TypeUrl: "t", Value: []byte("x")}}}
	unknown.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 99, protowire.BytesType), "future field"))
	ttlWrapped, err := anypb.New(&discoveryv3.Resource{Name: "l", Ttl: durationpb.New(1)})
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases,
		unknown,
		&discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{{}, {TypeUrl: "only-type"}, {Value: []byte("only-value")}}},
		&discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{ttlWrapped}},
		&discoveryv3.DiscoveryResponse{VersionInfo: "all", Canary: true, TypeUrl: resource.ListenerType, Nonce: "1",
			ControlPlane: &corev3.ControlPlane{Identifier: "cmd/xds"}, Resources: []*anypb.Any{{TypeUrl: "t", Value: bytes.Repeat([]byte{1}, 300)}}},
	)
	if n := len(cases[0].GetResources()); n < 20 {
		t.Fatalf("the snapshot's node has %d listeners, want at least 20", n)
	}
	for i, resp := range cases {
		bs, err := newCodec().Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		var back discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(bs.Materialize(), &back); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !proto.Equal(&back, resp) {
			t.Errorf("case %d: decodes to\n%v\nwant\n%v", i, &back, resp)
		}
		if want := proto.Size(resp); bs.Len() != want {
			t.Errorf("case %d: %d bytes, proto's encoding has %d", i, bs.Len(), want)
		}
		shared := 0
		for _, a := range resp.GetResources() {
			for _, b := range bs {
				if d := b.ReadOnlyData(); len(a.GetValue()) > 0 && len(d) == len(a.GetValue()) && unsafe.SliceData(d) == unsafe.SliceData(a.GetValue()) {
					shared++
					break
				}
			}
		}
		if want := countValues(resp); shared != want {
			t.Errorf("case %d: %d of %d resource values referred to, want all", i, shared, want)
		}
	}
}

func countValues(r *discoveryv3.DiscoveryResponse) int {
	n := 0
	for _, a := range r.GetResources() {
		if len(a.GetValue()) > 0 {
			n++
		}
	}
	return n
}

// TestCodecLeavesToProto: what the referring encoding would not write exactly (a nil resource, an
// Any with unknown fields) or has no use for (no resources) is proto's encoding, byte for byte, in
// one buffer of its size (gRPC's default pool would give a 1 MiB one to a large response), and
// decodes with the codec.
func TestCodecLeavesToProto(t *testing.T) {
	withUnknown := &anypb.Any{TypeUrl: "t", Value: []byte("v")}
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
	for i, resp := range []*discoveryv3.DiscoveryResponse{
		{VersionInfo: strings.Repeat("v", 100<<10)},
		{Resources: []*anypb.Any{{TypeUrl: "t", Value: []byte("v")}, nil}},
		{Resources: []*anypb.Any{withUnknown}},
	} {
		bs, err := newCodec().Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) != 1 || !bytes.Equal(bs[0].ReadOnlyData(), want) || cap(bs[0].ReadOnlyData()) != len(want) {
			t.Errorf("case %d: %d buffers, %d bytes (capacity %d), want proto's %d in one", i, len(bs), bs.Len(), cap(bs[0].ReadOnlyData()), len(want))
		}
		var back discoveryv3.DiscoveryResponse
		if err := newCodec().Unmarshal(bs, &back); err != nil || !proto.Equal(&back, resp) {
			t.Errorf("case %d: decode: %v", i, err)
		}
	}
}
