package decide

import (
	"encoding/hex"
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

// answer is what the cache keeps per (scope, VM address): the instance's ids and their signature,
// compact (one string allocation and 32 bytes), not the message. With 100k VMs cached the message
// itself would cost ~0.5 KB each; it is built for each request instead (response).
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

// response returns the signed request_headers answer for a request from addr: remove every header
// the VM must not control, then set the instance's identity with raw_value only (DESIGN.md
// section 3). It is built for each request from the compact cached answer, in one allocation
// (signedResponse); RemovedHeaders is shared by every answer and never modified.
func (a answer) response(addr netip.Addr) *extprocv3.ProcessingResponse {
	r := new(signedResponse)
	values := r.values[:0]
	values = append(values, a.ids[:a.ends[1]]...) // instance id, then project id
	values = hex.AppendEncode(values, a.signature[:])
	values = addr.AppendTo(values)
	idEnd, projectEnd, sigEnd := int(a.ends[0]), int(a.ends[1]), int(a.ends[1])+2*sign.Size
	r.set(0, HeaderInstanceID, values[:idEnd:idEnd])
	r.set(1, HeaderTenantID, values[idEnd:projectEnd:projectEnd])
	r.set(2, HeaderSignature, values[projectEnd:sigEnd:sigEnd])
	r.set(3, HeaderXFF, values[sigEnd:len(values):len(values)])
	r.mutation.SetHeaders = r.setPtrs[:]
	r.mutation.RemoveHeaders = RemovedHeaders
	r.common.HeaderMutation = &r.mutation
	r.headers.Response = &r.common
	r.oneof.RequestHeaders = &r.headers
	r.resp.Response = &r.oneof
	return &r.resp
}

// signedResponse is every part of a signed answer's message, allocated together: a cache hit
// builds its answer with one allocation instead of eighteen. The header values share one array,
// sized for nova's uuids, a 32-character project id and an IPv6 address (longer ids, up to
// Neutron's 255 characters, take one more allocation); each value's capacity ends where the value
// does, so that nothing appended to one can overwrite the next.
type signedResponse struct {
	resp     extprocv3.ProcessingResponse
	oneof    extprocv3.ProcessingResponse_RequestHeaders
	headers  extprocv3.HeadersResponse
	common   extprocv3.CommonResponse
	mutation extprocv3.HeaderMutation
	setPtrs  [4]*corev3.HeaderValueOption
	options  [4]corev3.HeaderValueOption
	header   [4]corev3.HeaderValue
	values   [len("0a1b2c3d-0000-4000-8000-000000000001") + 32 + 2*sign.Size + len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")]byte
}

// set makes the i-th set header key: value.
func (r *signedResponse) set(i int, key string, value []byte) {
	r.header[i].Key, r.header[i].RawValue = key, value
	r.options[i].Header = &r.header[i]
	r.options[i].AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	r.setPtrs[i] = &r.options[i]
}
