package serve

import (
	"bytes"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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
	if &got[0] != &s.raw[0] {
		t.Error("marshaling a served copied its encoding")
	}
	_ = append(got, 0xff)
	if !bytes.Equal(s.raw, want) {
		t.Error("an append to the marshaled bytes changed the kept encoding")
	}
	if cache.GetResourceName(s) != ls[0].GetName() || s.version() != cache.HashResource(want) {
		t.Errorf("name %q version %q, want %q %q", cache.GetResourceName(s), s.version(), ls[0].GetName(), cache.HashResource(want))
	}
	// As a field of another message (no path of go-control-plane does it, but proto must agree).
	a, err := anypb.New(s)
	if err != nil || !bytes.Equal(a.GetValue(), want) {
		t.Errorf("anypb.New: %v, value equal %v", err, bytes.Equal(a.GetValue(), want))
	}
}
