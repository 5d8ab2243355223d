package decide

import (
	"encoding/hex"
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/metaproxy/metaproxy/pkg/protoframe"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

// answer is what the cache keeps per (scope, VM address): the instance's ids and their signature,
// compact (one string allocation and 32 bytes), not the message. With 100k VMs cached the message
// itself would cost ~0.5 KB each; it is encoded at each send instead (encode), a few hundred ns.
type answer struct {
	// ids holds the instance id, project id, port id and, when it differs from the listener's
	// scope (router mode), the port's network id, one after the other; ends marks where the first
	// three end.
	ids       string
	ends      [3]uint16
	signature [sign.Size]byte
}

// newAnswer packs inst, signed with sum. Neutron limits the ids to 255 characters; longer ones
// are refused rather than cut.
func newAnswer(scope resolve.Scope, inst resolve.Instance, sum [sign.Size]byte) (answer, error) {
	network := inst.NetworkID
	if network == scope.ID {
		network = ""
	}
	parts := [...]string{inst.InstanceID, inst.ProjectID, inst.PortID, network}
	a := answer{signature: sum}
	n := 0
	for i, p := range parts {
		if len(p) > 255 {
			return answer{}, fmt.Errorf("port %.64s: an id of %d characters (Neutron allows 255)", inst.PortID, len(p))
		}
		n += len(p)
		if i < len(a.ends) {
			a.ends[i] = uint16(n)
		}
	}
	a.ids = parts[0] + parts[1] + parts[2] + parts[3]
	return a, nil
}

// instance returns the instance a was made for (substrings of a.ids: no allocation).
func (a answer) instance(scope resolve.Scope) resolve.Instance {
	inst := resolve.Instance{
		InstanceID: a.ids[:a.ends[0]],
		ProjectID:  a.ids[a.ends[0]:a.ends[1]],
		PortID:     a.ids[a.ends[1]:a.ends[2]],
		NetworkID:  a.ids[a.ends[2]:],
	}
	if inst.NetworkID == "" {
		inst.NetworkID = scope.ID
	}
	return inst
}

// encode returns the signed request_headers answer for a request from addr: remove every header
// the VM must not control, then set the instance's identity with raw_value only (DESIGN.md
// section 3). The head (message framing and the four set_headers) is made here; the tail (the
// remove_headers list) is the same for every answer and shared.
func (a answer) encode(addr netip.Addr) *protoframe.Encoded {
	var xffBuf [64]byte
	xff := addr.AppendTo(xffBuf[:0])
	var signature [2 * sign.Size]byte
	hex.Encode(signature[:], a.signature[:])
	inst, project := a.ids[:a.ends[0]], a.ids[a.ends[0]:a.ends[1]]

	set := setHeaderSize(HeaderInstanceID, len(inst)) + setHeaderSize(HeaderTenantID, len(project)) +
		setHeaderSize(HeaderSignature, len(signature)) + setHeaderSize(HeaderXFF, len(xff))
	mutation := set + len(removedTail)
	common := protowire.SizeTag(field.mutation) + protowire.SizeBytes(mutation)
	headers := protowire.SizeTag(field.response) + protowire.SizeBytes(common)
	size := protowire.SizeTag(field.requestHeaders) + protowire.SizeBytes(headers) - len(removedTail)

	b := make([]byte, 0, size)
	b = protowire.AppendTag(b, field.requestHeaders, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(headers))
	b = protowire.AppendTag(b, field.response, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(common))
	b = protowire.AppendTag(b, field.mutation, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(mutation))
	b = appendSetHeader(b, HeaderInstanceID, inst)
	b = appendSetHeader(b, HeaderTenantID, project)
	b = appendSetHeader(b, HeaderSignature, signature[:])
	b = appendSetHeader(b, HeaderXFF, xff)
	return protoframe.NewEncoded(b, removedTail)
}

// headerValueSize is the size of a HeaderValue{key, raw_value} with a value of n bytes (an empty
// value is left out, as protobuf does).
func headerValueSize(key string, n int) int {
	size := protowire.SizeTag(field.key) + protowire.SizeBytes(len(key))
	if n > 0 {
		size += protowire.SizeTag(field.rawValue) + protowire.SizeBytes(n)
	}
	return size
}

// optionSize is the size of HeaderValueOption{header, append_action OVERWRITE_IF_EXISTS_OR_ADD}.
func optionSize(key string, n int) int {
	return protowire.SizeTag(field.header) + protowire.SizeBytes(headerValueSize(key, n)) +
		protowire.SizeTag(field.appendAction) + protowire.SizeVarint(uint64(overwrite))
}

// setHeaderSize is the size of one set_headers entry in a HeaderMutation.
func setHeaderSize(key string, n int) int {
	return protowire.SizeTag(field.setHeaders) + protowire.SizeBytes(optionSize(key, n))
}

// appendSetHeader appends one set_headers entry: key overwritten with value, in raw_value.
func appendSetHeader[V string | []byte](b []byte, key string, value V) []byte {
	b = protowire.AppendTag(b, field.setHeaders, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(optionSize(key, len(value))))
	b = protowire.AppendTag(b, field.header, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(headerValueSize(key, len(value))))
	b = protowire.AppendTag(b, field.key, protowire.BytesType)
	b = protowire.AppendString(b, key)
	if len(value) > 0 {
		b = protowire.AppendTag(b, field.rawValue, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(value)))
		b = append(b, value...)
	}
	b = protowire.AppendTag(b, field.appendAction, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(overwrite))
}

// overwrite is the append_action of every set header.
const overwrite = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD

// field holds the protobuf field numbers encode writes, read from the generated descriptors so
// that they cannot drift from the .proto files.
var field = struct {
	requestHeaders, response, mutation, setHeaders, removeHeaders, header, appendAction, key, rawValue protowire.Number
}{
	requestHeaders: protoframe.FieldNumber(&extprocv3.ProcessingResponse{}, "request_headers"),
	response:       protoframe.FieldNumber(&extprocv3.HeadersResponse{}, "response"),
	mutation:       protoframe.FieldNumber(&extprocv3.CommonResponse{}, "header_mutation"),
	setHeaders:     protoframe.FieldNumber(&extprocv3.HeaderMutation{}, "set_headers"),
	removeHeaders:  protoframe.FieldNumber(&extprocv3.HeaderMutation{}, "remove_headers"),
	header:         protoframe.FieldNumber(&corev3.HeaderValueOption{}, "header"),
	appendAction:   protoframe.FieldNumber(&corev3.HeaderValueOption{}, "append_action"),
	key:            protoframe.FieldNumber(&corev3.HeaderValue{}, "key"),
	rawValue:       protoframe.FieldNumber(&corev3.HeaderValue{}, "raw_value"),
}

// removedTail is the remove_headers part of every signed answer's HeaderMutation (RemovedHeaders,
// in order), encoded once.
var removedTail = func() []byte {
	var b []byte
	for _, h := range RemovedHeaders {
		b = protowire.AppendTag(b, field.removeHeaders, protowire.BytesType)
		b = protowire.AppendString(b, h)
	}
	return b
}()
