package serve

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// TestPatchedEncodingIsTheEncoding: listeners of many networks (both kinds, IPv4 and IPv6, other
// namespace directories, generations, ids that are not UUIDs) kept through one common marshal,
// decode and hash exactly as what translate built, and all but the first of each shape are kept
// as differences a small part of their size.
func TestPatchedEncodingIsTheEncoding(t *testing.T) {
	sh := newShared(t)
	cm, err := newCommon(sh.Clusters(), sh.Routes())
	if err != nil {
		t.Fatal(err)
	}
	var networks []source.Network
	for i := range 40 {
		kind := resolve.KindNetwork
		if i%3 == 0 {
			kind = resolve.KindRouter
		}
		id := fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", i*7919, i, i, i, i*104729)
		if i%10 == 9 {
			id = fmt.Sprintf("net-%d", i) // the file source allows other ids
		}
		n := source.Network{Kind: kind, ID: id, NamespacePath: source.NamespacePath(source.DefaultNetnsDir, kind, id)}
		if i%2 == 0 {
			n.Interface = fmt.Sprintf("tap%08x-%02x", i, i)
		}
		if i%5 == 0 {
			n.NamespacePath = source.NamespacePath("/run/netns", kind, id)
			n.NamespaceGeneration = uint32(i)
		}
		networks = append(networks, n)
	}
	patched, total, patchBytes, fullBytes := 0, 0, 0, 0
	for _, n := range networks {
		ls, err := sh.Listeners(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			s, err := cm.encodeListener(l)
			if err != nil {
				t.Fatal(err)
			}
			want, err := cache.MarshalResource(l)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cache.MarshalResource(s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: marshals to\n%x\nwant\n%x", l.GetName(), got, want)
			}
			if a, err := anypb.New(s); err != nil || !bytes.Equal(a.GetValue(), want) {
				t.Errorf("%s: as an Any: %v", l.GetName(), err)
			}
			if into, err := (proto.MarshalOptions{}).MarshalAppend([]byte("prefix"), s); err != nil || !bytes.Equal(into, append([]byte("prefix"), want...)) {
				t.Errorf("%s: appended to a buffer: %x", l.GetName(), into)
			}
			if !proto.Equal(s, l) || s.version() != cache.HashResource(want) {
				t.Errorf("%s: decodes to another listener or hashes to another version", l.GetName())
			}
			total++
			fullBytes += len(want)
			if s.patch != nil {
				patched++
				patchBytes += len(s.patch)
				if len(s.patch) > len(want)/4 {
					t.Errorf("%s: %d bytes of differences kept for a %d-byte encoding", l.GetName(), len(s.patch), len(want))
				}
			}
		}
	}
	// Shapes: 2 kinds x IPv4/IPv6 x 2 directories, generation or not, UUID or not, and so on; the
	// bulk are of a few shapes.
	if patched < total*2/3 {
		t.Errorf("%d of %d listeners kept as differences", patched, total)
	}
	t.Logf("%d of %d listeners patched, %d bytes of differences for %d bytes of encodings", patched, total, patchBytes, fullBytes)
}

// TestDiffRoundTrips: for random encodings and random changes of them, the differences give the
// changed bytes back, and none are kept past the limit.
func TestDiffRoundTrips(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		n := r.IntN(300)
		base := make([]byte, n)
		for j := range base {
			base[j] = byte(r.IntN(4)) // a small alphabet: many equal bytes by chance
		}
		b := bytes.Clone(base)
		for range r.IntN(n/4 + 2) {
			if n > 0 {
				b[r.IntN(n)] = byte(r.IntN(4))
			}
		}
		limit := r.IntN(n + 10)
		p := diff(base, b, limit, nil)
		if p == nil {
			if d := diff(base, b, 1<<30, nil); len(d) <= limit {
				t.Fatalf("case %d: no differences kept under the limit %d, although they take %d bytes", i, limit, len(d))
			}
			continue
		}
		if len(p) > limit {
			t.Fatalf("case %d: %d bytes of differences over the limit %d", i, len(p), limit)
		}
		if got := patchedAppend([]byte("x"), base, p); !bytes.Equal(got[1:], b) || got[0] != 'x' {
			t.Fatalf("case %d: patched\n%x\nwant\n%x", i, got[1:], b)
		}
	}
	if p := diff([]byte("same"), []byte("same"), 0, nil); p == nil || len(p) != 0 {
		t.Errorf("equal encodings: differences %v, want none (not nil)", p)
	}
}

// TestTemplatesAreBounded: past maxTemplates lengths, encodings are kept whole.
func TestTemplatesAreBounded(t *testing.T) {
	var ts templates
	for n := 1; n <= maxTemplates+10; n++ {
		b := bytes.Repeat([]byte{1}, n)
		if base, patch := ts.compact(b); patch != nil || !bytes.Equal(base, b) {
			t.Fatalf("first encoding of length %d was patched", n)
		}
	}
	if len(ts.byLen) != maxTemplates {
		t.Errorf("%d templates, want at most %d", len(ts.byLen), maxTemplates)
	}
	b := bytes.Repeat([]byte{2}, maxTemplates+5)
	if _, patch := ts.compact(b); patch != nil {
		t.Error("an encoding of a length with no template was patched")
	}
	b = bytes.Repeat([]byte{1}, 40)
	b[3] = 9
	if base, patch := ts.compact(b); patch == nil || !bytes.Equal(patchedAppend(nil, base, patch), b) {
		t.Error("an encoding close to its template was not patched right")
	}
}
