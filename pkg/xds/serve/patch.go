package serve

import (
	"encoding/binary"
	"sync"
)

// A node's listeners are one listener per network built from the same settings: their encodings
// have the same length and differ only where the network's id is (the listener's name and stat
// prefixes, its namespace path, the ext_proc filter's initial metadata), a few hundred bytes of
// ~1.1 KB. At a thousand Envoys of a hundred networks each that was 147 MB of 260 MB live
// (docs/benchmarks.md). So a listener is kept as the bytes where it differs from the first listener
// of its length (a template the others share), and its encoding is made again when it is sent.
// The kept form is computed from the real encoding, and the real encoding is what it gives back
// (TestPatchedEncodingIsTheEncoding): nothing about a listener is assumed.

// maxTemplates bounds the templates of one set of shared resources: lengths come from the
// settings and the address families, a handful; past the bound encodings are kept whole.
const maxTemplates = 64

// patchGap is the longest run of equal bytes folded into a difference: each difference costs two
// varints, so shorter runs are cheaper copied.
const patchGap = 4

// templates are the encodings the others of their length are kept relative to.
type templates struct {
	mu     sync.Mutex
	byLen  map[int][]byte
	frozen bool // maxTemplates reached
}

// compact returns how to keep b: b's template and the differences from it (see patchedAppend),
// or b itself and no differences when it is the template of its length, when no template is
// there, or when the differences are not worth it (more than a quarter of b).
func (ts *templates) compact(b []byte) (base, patch []byte) {
	ts.mu.Lock()
	t, ok := ts.byLen[len(b)]
	if !ok && !ts.frozen {
		if ts.byLen == nil {
			ts.byLen = map[int][]byte{}
		}
		ts.byLen[len(b)] = b
		ts.frozen = len(ts.byLen) >= maxTemplates
	}
	ts.mu.Unlock()
	if !ok {
		return b, nil
	}
	var scratch [512]byte // the differences are made here, then kept in one allocation of their size
	p := diff(t, b, len(b)/4, scratch[:0])
	if p == nil {
		return b, nil
	}
	return t, append(make([]byte, 0, len(p)), p...)
}

// diff appends to out the differences of b from t (the same length) as a sequence of (uvarint
// count of equal bytes, uvarint count of different bytes, those bytes), or returns nil when they
// would take more than limit bytes. Equal runs of at most patchGap bytes are kept in the
// differences.
func diff(t, b []byte, limit int, out []byte) []byte {
	for i := 0; i < len(b); {
		start := i
		for i+8 <= len(b) && binary.LittleEndian.Uint64(t[i:]) == binary.LittleEndian.Uint64(b[i:]) {
			i += 8 // most of an encoding is equal to its template: compare it a word at a time
		}
		for i < len(b) && t[i] == b[i] {
			i++
		}
		if i == len(b) {
			break
		}
		same := i - start
		end := i
		for end < len(b) {
			if t[end] != b[end] {
				end++
				continue
			}
			run := end
			for run < len(b) && run-end <= patchGap && t[run] == b[run] {
				run++
			}
			if run == len(b) || run-end > patchGap {
				break
			}
			end = run
		}
		out = binary.AppendUvarint(out, uint64(same))
		out = binary.AppendUvarint(out, uint64(end-i))
		out = append(out, b[i:end]...)
		if len(out) > limit {
			return nil
		}
		i = end
	}
	if out == nil {
		out = []byte{} // b equals t: no differences, still patched (not nil)
	}
	return out
}

// patchedAppend appends to buf the encoding kept as base and patch (made by diff).
func patchedAppend(buf, base, patch []byte) []byte {
	pos := 0
	for len(patch) > 0 {
		same, n := binary.Uvarint(patch)
		patch = patch[n:]
		k, n := binary.Uvarint(patch)
		patch = patch[n:]
		buf = append(buf, base[pos:pos+int(same)]...)
		buf = append(buf, patch[:k]...)
		patch = patch[k:]
		pos += int(same) + int(k)
	}
	return append(buf, base[pos:]...)
}
