package serve

import (
	"bytes"
	"crypto/sha256"
	"slices"
	"strings"
	"sync"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// The listeners of the networks of one shape (the same kind, namespace directory, namespace
// generation, and lengths of id and interface name; shapeKey) are built by translate from the same
// settings with only the network's id and its interface name put in: the listener's name and stat
// prefixes, its namespace path, the ext_proc filter's initial metadata, the SO_BINDTODEVICE option.
// At a thousand Envoys of a hundred networks each, building, validating and marshaling every one of
// them was most of a first poll (docs/benchmarks.md). So translate builds the listeners of the first
// network of a shape twice, once as they are and once with placeholders of the same lengths for
// the id and the interface; the encodings of the second, with the places the placeholders are in
// (slots), are the shape's stamps. The first network proves them: its own values written into the
// slots must give exactly the encodings translate made of it, or the shape gets no stamps and each
// of its networks is built by translate. The listeners of every other network of the shape are
// the stamps with its values written in, made without building or marshaling a message, and kept
// as the stamp and the values (a listener's encoding is made again when it is sent).
//
// Translate validates what differs between the networks of a shape before anything is stamped
// (translate.CheckNetwork: an id and an interface name of letters, digits and a few marks);
// the listeners of both built networks passed protoc-gen-validate, whose rules on those fields
// (names, stat prefixes, a file path, a gRPC metadata value, a socket option's bytes) do not tell
// two such values of the same length apart. TestStampedEncodingIsTheEncoding compares stamped
// listeners with translate's for networks of every shape.

// maxShapes bounds the shapes stamped per set of shared resources: a node's networks come in a
// handful (kinds, namespace directories, with and without an interface); networks of shapes past
// the bound are built by translate, as are those whose namespace path is not their id's.
const maxShapes = 64

// shapeKey is what, besides the id and the interface name, the listeners of a network are built
// from: every field of source.Network (TestShapeKeyCoversNetwork).
type shapeKey struct {
	kind resolve.Kind
	// path is the namespace path with the id in it replaced by pathID.
	path         string
	generation   uint32
	idLen, ifLen int
}

// pathID stands for the id in shapeKey.path: no valid id or namespace path holds it.
const pathID = "\x00"

// shapeOf returns the shape of n, ok false when n is not stamped (its namespace path does not hold
// its id, or holds pathID).
func shapeOf(n source.Network) (shapeKey, bool) {
	if n.ID == "" || !strings.Contains(n.NamespacePath, n.ID) || strings.Contains(n.NamespacePath, pathID) {
		return shapeKey{}, false
	}
	return shapeKey{
		kind:       n.Kind,
		path:       strings.ReplaceAll(n.NamespacePath, n.ID, pathID),
		generation: n.NamespaceGeneration,
		idLen:      len(n.ID),
		ifLen:      len(n.Interface),
	}, true
}

// slot is a place of a stamp where a network's value is written: its id (value 0) or its
// interface name (1), at byte at.
type slot struct {
	at    int32
	value uint8
}

// stamped is bytes with slots for a network's values, sorted by place.
type stamped struct {
	b     []byte
	slots []slot
}

// newStamped finds in b the slots of the placeholders id and iface (no byte in common, so their
// places cannot overlap).
func newStamped(b []byte, id, iface string) stamped {
	st := stamped{b: b}
	for v, p := range []string{id, iface} {
		if p == "" {
			continue
		}
		for at := 0; ; {
			i := bytes.Index(b[at:], []byte(p))
			if i < 0 {
				break
			}
			st.slots = append(st.slots, slot{at: int32(at + i), value: uint8(v)})
			at += i + len(p)
		}
	}
	slices.SortFunc(st.slots, func(a, b slot) int { return int(a.at - b.at) })
	return st
}

// appendTo appends to buf the bytes with id and iface written in the slots.
func (st *stamped) appendTo(buf []byte, id, iface string) []byte {
	start := len(buf)
	buf = append(buf, st.b...)
	for _, s := range st.slots {
		v := id
		if s.value == 1 {
			v = iface
		}
		copy(buf[start+int(s.at):], v)
	}
	return buf
}

// stamp is one listener of a shape: its encoding and its name, with slots.
type stamp struct {
	enc  stamped
	name stamped
}

// build returns the listener of network n (of the stamp's shape) with refs.
func (st *stamp) build(n source.Network, refs []string) *served {
	var nb [128]byte
	s := &served{
		base:  st.enc.b,
		stamp: st,
		iface: strings.Clone(n.Interface), // not a part of a larger string the source parsed
		typ:   listenerType,
		name:  string(st.name.appendTo(nb[:0], n.ID, n.Interface)),
		refs:  refs,
	}
	for _, sl := range st.name.slots {
		if sl.value == 0 { // the name holds the id: keep that, not another copy
			s.id = s.name[sl.at : int(sl.at)+len(n.ID)]
			break
		}
	}
	if s.id == "" {
		s.id = strings.Clone(n.ID)
	}
	var eb [2048]byte
	s.digest = sha256.Sum256(st.enc.appendTo(eb[:0], n.ID, n.Interface))
	return s
}

// stamps are the stamps of the shapes of one set of shared resources.
type stamps struct {
	mu      sync.Mutex
	byShape map[shapeKey][]*stamp // nil entry: the shape is built by translate
}

// listeners returns the listeners of n stamped, ok false when n is built by translate: its shape
// is not stamped, or n is not valid (translate tells why).
func (ss *stamps) listeners(sh *translate.Shared, cm *common, n source.Network) ([]*served, bool) {
	key, ok := shapeOf(n)
	if !ok || translate.CheckNetwork(n) != nil {
		return nil, false
	}
	ss.mu.Lock()
	sts, known := ss.byShape[key]
	full := len(ss.byShape) >= maxShapes
	ss.mu.Unlock()
	if !known {
		if full {
			return nil, false
		}
		sts = newStamps(sh, cm, n) // outside the lock: workers stamp other shapes meanwhile
		ss.mu.Lock()
		if ss.byShape == nil {
			ss.byShape = map[shapeKey][]*stamp{}
		}
		if prev, raced := ss.byShape[key]; raced {
			sts = prev
		} else if len(ss.byShape) < maxShapes {
			ss.byShape[key] = sts
		}
		ss.mu.Unlock()
	}
	if sts == nil {
		return nil, false
	}
	out := make([]*served, len(sts))
	for i, st := range sts {
		out[i] = st.build(n, cm.listenerRefs)
	}
	return out, true
}

// newStamps returns the stamps of n's shape, nil when n's own listeners are not what they give.
func newStamps(sh *translate.Shared, cm *common, n source.Network) []*stamp {
	id, iface := placeholder(n.ID, 'z', 'y'), placeholder(n.Interface, 'Q', 'R')
	p := n
	p.ID, p.Interface = id, iface
	p.NamespacePath = strings.ReplaceAll(n.NamespacePath, n.ID, id)
	real, err := translateNetwork(sh, cm, n)
	if err != nil {
		return nil
	}
	ph, err := translateNetwork(sh, cm, p)
	if err != nil {
		return nil
	}
	return proveStamps(ph, real, n, id, iface)
}

// proveStamps returns the stamps of the listeners ph of a network with placeholders id and iface,
// nil unless they give exactly the listeners real of network n.
func proveStamps(ph, real []*served, n source.Network, id, iface string) []*stamp {
	if len(ph) != len(real) {
		return nil
	}
	out := make([]*stamp, len(ph))
	for i, l := range ph {
		st := &stamp{enc: newStamped(l.encoding(), id, iface), name: newStamped([]byte(l.name), id, iface)}
		if !bytes.Equal(st.enc.appendTo(nil, n.ID, n.Interface), real[i].encoding()) ||
			string(st.name.appendTo(nil, n.ID, n.Interface)) != real[i].name {
			return nil
		}
		out[i] = st
	}
	return out
}

// placeholder returns a value of v's length that is not v: a run of c, or of d when v is that.
func placeholder(v string, c, d byte) string {
	p := strings.Repeat(string(c), len(v))
	if p == v {
		p = strings.Repeat(string(d), len(v))
	}
	return p
}
