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
// section 3). It is built for each request from the compact cached answer; RemovedHeaders is
// shared by every answer and never modified.
func (a answer) response(addr netip.Addr) *extprocv3.ProcessingResponse {
	var signature [2 * sign.Size]byte
	hex.Encode(signature[:], a.signature[:])
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{
					rawHeader(HeaderInstanceID, []byte(a.ids[:a.ends[0]])),
					rawHeader(HeaderTenantID, []byte(a.ids[a.ends[0]:a.ends[1]])),
					rawHeader(HeaderSignature, signature[:]),
					rawHeader(HeaderXFF, addr.AppendTo(nil)),
				},
				RemoveHeaders: RemovedHeaders,
			}},
		}},
	}
}
