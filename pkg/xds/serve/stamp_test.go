package serve

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

const idChars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"

// randomID returns a valid id of n bytes (contract.ValidID: the first a letter or digit).
func randomID(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = idChars[r.IntN(len(idChars))]
	}
	b[0] = idChars[r.IntN(len(idChars)-2)]
	return string(b)
}

// randomInterface returns a valid interface name (source.ValidInterface) of n bytes.
func randomInterface(r *rand.Rand, n int) string {
	const chars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-"
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}

// commonOf returns the common resources of sh.
func commonOf(t *testing.T, sh *translate.Shared) *common {
	t.Helper()
	cm, err := newCommon(sh.Clusters(), sh.Routes())
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// newTestCommon returns the default settings' translate.Shared and its common resources.
func newTestCommon(t *testing.T) (*translate.Shared, *common) {
	sh := newShared(t)
	return sh, commonOf(t, sh)
}

// checkListeners fails t unless got are exactly the listeners translate builds of n: names,
// encodings, what they marshal to as an Any and appended to a buffer, their decoding and their
// delta versions.
func checkListeners(t *testing.T, sh *translate.Shared, n source.Network, got []*served) {
	t.Helper()
	want, err := sh.Listeners(n)
	if err != nil {
		t.Fatalf("%+v: %v", n, err)
	}
	if len(got) != len(want) {
		t.Fatalf("%+v: %d listeners, want %d", n, len(got), len(want))
	}
	for i, l := range want {
		s := got[i]
		enc, err := cache.MarshalResource(l)
		if err != nil {
			t.Fatal(err)
		}
		if s.name != l.GetName() {
			t.Fatalf("%+v: listener named %q, want %q", n, s.name, l.GetName())
		}
		m, err := cache.MarshalResource(s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m, enc) {
			t.Fatalf("%s: marshals to\n%x\nwant\n%x", l.GetName(), m, enc)
		}
		if a, err := anypb.New(s); err != nil || !bytes.Equal(a.GetValue(), enc) {
			t.Errorf("%s: as an Any: %v", l.GetName(), err)
		}
		if into, err := (proto.MarshalOptions{}).MarshalAppend([]byte("prefix"), s); err != nil || !bytes.Equal(into, append([]byte("prefix"), enc...)) {
			t.Errorf("%s: appended to a buffer: %x", l.GetName(), into)
		}
		if !proto.Equal(s, l) || s.version() != cache.HashResource(enc) {
			t.Errorf("%s: decodes to another listener or hashes to another version", l.GetName())
		}
	}
}

// TestStampedEncodingIsTheEncoding: the listeners of networks of many shapes (both kinds, IPv4
// and IPv6, namespace directories, generations, ids of every length and character translate
// accepts, UUIDs among them, and interface names), several networks of each, are exactly what
// translate builds, and all but the first of each UUID shape are stamped.
func TestStampedEncodingIsTheEncoding(t *testing.T) {
	sh := newShared(t)
	r := rand.New(rand.NewPCG(3, 4))
	stamped, stampable := 0, 0
	for _, kind := range []resolve.Kind{resolve.KindNetwork, resolve.KindRouter} {
		for _, dir := range []string{source.DefaultNetnsDir, "/run/netns"} {
			cm := commonOf(t, sh) // fewer than maxShapes shapes each
			for _, gen := range []uint32{0, 1, 2} {
				for _, idLen := range []int{36, 32, 1, 2, 64} {
					for _, ifLen := range []int{0, 14, 1} {
						for i := range 6 {
							id := randomID(r, idLen)
							if i == 1 && idLen > 1 {
								id = strings.Repeat("z", idLen) // the placeholder itself
							}
							n := source.Network{Kind: kind, ID: id, NamespacePath: source.NamespacePath(dir, kind, id), NamespaceGeneration: gen}
							if ifLen > 0 {
								n.Interface = randomInterface(r, ifLen)
							}
							got, err := buildNetwork(sh, cm, n)
							if err != nil {
								t.Fatalf("%+v: %v", n, err)
							}
							checkListeners(t, sh, n, got)
							for _, s := range got {
								// Placeholders of a byte or two may be found anywhere in an
								// encoding, which the first network then contradicts.
								if idLen >= 32 && ifLen != 1 && i > 0 {
									stampable++
									if s.stamp != nil {
										stamped++
									}
								}
							}
						}
					}
				}
			}
		}
	}
	if stamped != stampable {
		t.Errorf("%d of %d listeners of UUID-length shapes stamped, want all but the first network's", stamped, stampable)
	}
}

// TestStampsNeedTheNetworksOwnValues: a network of a stamped shape whose id or interface name
// translate refuses gets translate's error, not listeners.
func TestStampsNeedTheNetworksOwnValues(t *testing.T) {
	sh, cm := newTestCommon(t)
	good := source.Network{Kind: resolve.KindNetwork, ID: "0b1f3c2e-5d4a-4e6f-8a9b-1c2d3e4f5a6b", Interface: "tap0b1f3c2e-5d"}
	good.NamespacePath = source.NamespacePath(source.DefaultNetnsDir, good.Kind, good.ID)
	if _, err := buildNetwork(sh, cm, good); err != nil {
		t.Fatal(err)
	}
	badID := good
	badID.ID = "0b1f3c2e&5d4a-4e6f-8a9b-1c2d3e4f5a6c"
	badID.NamespacePath = source.NamespacePath(source.DefaultNetnsDir, good.Kind, badID.ID)
	badIface := good
	badIface.ID = "0b1f3c2e-5d4a-4e6f-8a9b-1c2d3e4f5a6d"
	badIface.NamespacePath = source.NamespacePath(source.DefaultNetnsDir, good.Kind, badIface.ID)
	badIface.Interface = "tap0b1f3c2e/5d"
	for _, n := range []source.Network{badID, badIface} {
		if _, err := shapeOf(n); !err {
			t.Fatalf("%+v: not of a stamped shape", n)
		}
		if ls, err := buildNetwork(sh, cm, n); err == nil {
			t.Errorf("%+v: %d listeners, want translate's error", n, len(ls))
		}
	}
}

// TestProveStampsRefusesWhatTheNetworkContradicts: stamps are made only when the real network's
// values written into them give its real encodings, so a place the placeholder holds by chance,
// or a value translate would change, leaves the shape to translate.
func TestProveStampsRefusesWhatTheNetworkContradicts(t *testing.T) {
	n := source.Network{ID: "ab12", Interface: "eth0"}
	const id, iface = "zzzz", "QQQQ"
	mk := func(name, enc string) []*served { return []*served{{name: name, base: []byte(enc)}} }
	ph := mk("l-zzzz", "\x0azzzz\x12QQQQ\x1a-zzzz-")
	if got := proveStamps(ph, mk("l-ab12", "\x0aab12\x12eth0\x1a-ab12-"), n, id, iface); got == nil {
		t.Fatal("consistent encodings not stamped")
	} else if s := got[0].enc.appendTo([]byte(">"), "cd34", "wlan"); string(s) != ">\x0acd34\x12wlan\x1a-cd34-" {
		t.Errorf("stamped %q", s)
	}
	for name, real := range map[string][]*served{
		"the placeholder in a place that is not the id's": mk("l-ab12", "\x0aab12\x12eth0\x1a-zzzz-"),
		"the id changed by translate":                     mk("l-ab12", "\x0aAB12\x12eth0\x1a-ab12-"),
		"a name that is not the stamped one":              mk("l-AB12", "\x0aab12\x12eth0\x1a-ab12-"),
		"another number of listeners":                     append(mk("l-ab12", "\x0aab12\x12eth0\x1a-ab12-"), mk("x", "y")...),
	} {
		if got := proveStamps(ph, real, n, id, iface); got != nil {
			t.Errorf("%s: stamped", name)
		}
	}
}

// TestShapesAreBounded: past maxShapes shapes, networks are translated, and still right.
func TestShapesAreBounded(t *testing.T) {
	sh, cm := newTestCommon(t)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range maxShapes + 10 {
		id := randomID(r, 36)
		n := source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: source.NamespacePath(fmt.Sprintf("/run/netns-%d", i), resolve.KindNetwork, id)}
		got, err := buildNetwork(sh, cm, n)
		if err != nil {
			t.Fatal(err)
		}
		checkListeners(t, sh, n, got)
		if i >= maxShapes && got[0].stamp != nil {
			t.Fatalf("network of shape %d stamped past the bound", i)
		}
	}
	if len(cm.stamps.byShape) != maxShapes {
		t.Errorf("%d shapes, want %d", len(cm.stamps.byShape), maxShapes)
	}
}

// TestShapeKeyCoversNetwork: shapeKey holds every field of source.Network but the two values
// stamped; a new field must be added to it (and to shapeOf) or the stamps would give every
// network of a shape the first one's.
func TestShapeKeyCoversNetwork(t *testing.T) {
	var fields []string
	typ := reflect.TypeFor[source.Network]()
	for i := range typ.NumField() {
		fields = append(fields, typ.Field(i).Name)
	}
	want := []string{"Kind", "ID", "NamespacePath", "Interface", "NamespaceGeneration"}
	if !slices.Equal(fields, want) {
		t.Errorf("source.Network has fields %v; shapeKey covers %v", fields, want)
	}
}

// TestNetworksOutsideAShapeAreTranslated: a namespace path that does not hold the network's id is
// no shape.
func TestNetworksOutsideAShapeAreTranslated(t *testing.T) {
	sh, cm := newTestCommon(t)
	n := source.Network{Kind: resolve.KindNetwork, ID: "0b1f3c2e-5d4a-4e6f-8a9b-1c2d3e4f5a6b", NamespacePath: "/run/netns/blue"}
	got, err := buildNetwork(sh, cm, n)
	if err != nil {
		t.Fatal(err)
	}
	checkListeners(t, sh, n, got)
	if got[0].stamp != nil || len(cm.stamps.byShape) != 0 {
		t.Error("a network whose namespace path does not hold its id was stamped")
	}
}
