package decide

import (
	"net/netip"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

// reference is the signed answer written out as DESIGN.md section 3 states it: remove what the VM
// must not control, then overwrite the identity with raw_value only.
func reference(s *sign.Signer, inst resolve.Instance, addr netip.Addr) *extprocv3.ProcessingResponse {
	set := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{
					set("x-instance-id", inst.InstanceID),
					set("x-tenant-id", inst.ProjectID),
					set("x-instance-id-signature", s.Sign(inst.InstanceID)),
					set("x-forwarded-for", addr.String()),
				},
				RemoveHeaders: []string{"x-instance-id", "x-instance-id-signature", "x-tenant-id", "x-forwarded-for",
					"x-neutron-network-id", "x-neutron-router-id", "x-ovn-network-id", "x-metadata-provider", "x-metadata-provider-signature"},
			}},
		}},
	}
}

// TestResponseIsTheSignedMutation: the answer built from the compact cached form is the reference
// message, for short and long ids, IPv4 and IPv6 sources.
func TestResponseIsTheSignedMutation(t *testing.T) {
	s, _ := sign.New([]byte("s3cr3t"))
	long := strings.Repeat("i", 255)
	for name, tc := range map[string]struct {
		inst resolve.Instance
		addr string
	}{
		"uuid ids, IPv4":             {resolve.Instance{InstanceID: "0a1b2c3d-0000-4000-8000-000000000001", ProjectID: "f00dfeedf00dfeedf00dfeedf00dfeed", PortID: "p", NetworkID: "net1"}, "10.0.0.5"},
		"IPv6 source":                {resolve.Instance{InstanceID: "i", ProjectID: "p"}, "2001:db8::1234:5678:9abc:def0"},
		"255-character ids":          {resolve.Instance{InstanceID: long, ProjectID: long, PortID: long}, "192.168.100.200"},
		"255-character ids, IPv6":    {resolve.Instance{InstanceID: long, ProjectID: long}, "2001:db8:1111:2222:3333:4444:5555:6666"},
		"empty project (not signed)": {resolve.Instance{InstanceID: "i"}, "10.0.0.6"},
	} {
		t.Run(name, func(t *testing.T) {
			addr := netip.MustParseAddr(tc.addr)
			a, err := newAnswer(resolve.Scope{Kind: resolve.KindNetwork, ID: "net1"}, tc.inst, s.Sum(tc.inst.InstanceID))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(reference(s, tc.inst, addr), a.response(addr), protocmp.Transform()); diff != "" {
				t.Fatalf("answer differs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestResponseValuesDoNotOverlap: the header values share one array; growing one (as a caller
// appending to RawValue may) never writes into the next.
func TestResponseValuesDoNotOverlap(t *testing.T) {
	s, _ := sign.New([]byte("s3cr3t"))
	inst := resolve.Instance{InstanceID: "0a1b2c3d-0000-4000-8000-000000000001", ProjectID: "f00dfeedf00dfeedf00dfeedf00dfeed"}
	a, _ := newAnswer(resolve.Scope{Kind: resolve.KindNetwork, ID: "n"}, inst, s.Sum(inst.InstanceID))
	addr := netip.MustParseAddr("10.0.0.5")
	set := a.response(addr).GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()
	for _, h := range set {
		_ = append(h.GetHeader().GetRawValue(), "XXXXXXXXXXXXXXXX"...)
	}
	if diff := cmp.Diff(reference(s, inst, addr).GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders(), set, protocmp.Transform()); diff != "" {
		t.Fatalf("appending to one value changed another (-want +got):\n%s", diff)
	}
}

// TestAnswerKeepsTheInstance: the packed ids give back the instance, and the network id is only
// stored when it differs from the listener's (router mode).
func TestAnswerKeepsTheInstance(t *testing.T) {
	inst := resolve.Instance{InstanceID: "vm", ProjectID: "proj", PortID: "port", NetworkID: "net1"}
	for name, scope := range map[string]resolve.Scope{
		"network": {Kind: resolve.KindNetwork, ID: "net1"},
		"router":  {Kind: resolve.KindRouter, ID: "router1"},
	} {
		t.Run(name, func(t *testing.T) {
			a, err := newAnswer(scope, inst, [sign.Size]byte{})
			if err != nil {
				t.Fatal(err)
			}
			if got := a.instance(scope); got != inst {
				t.Fatalf("instance %+v, want %+v", got, inst)
			}
			if stored := strings.Contains(a.ids, "net1"); stored != (scope.ID != "net1") {
				t.Errorf("ids %q: network id stored %v", a.ids, stored)
			}
		})
	}
}

func TestAnswerRefusesIDsNeutronCannotHold(t *testing.T) {
	inst := resolve.Instance{InstanceID: strings.Repeat("x", 256), ProjectID: "p", PortID: "port1"}
	if _, err := newAnswer(resolve.Scope{Kind: resolve.KindNetwork, ID: "n"}, inst, [sign.Size]byte{}); err == nil || !strings.Contains(err.Error(), "255") {
		t.Fatalf("err = %v, want the 255-character limit", err)
	}
}

// BenchmarkResponse is the per-request cost of a cache hit's answer: the message built from the
// cached ids and signature, and marshalled as gRPC's codec does.
func BenchmarkResponse(b *testing.B) {
	s, _ := sign.New([]byte("s3cr3t"))
	inst := resolve.Instance{InstanceID: "0a1b2c3d-0000-4000-8000-000000000001", ProjectID: "f00dfeedf00dfeedf00dfeedf00dfeed"}
	a, _ := newAnswer(resolve.Scope{Kind: resolve.KindNetwork, ID: "n"}, inst, s.Sum(inst.InstanceID))
	addr := netip.MustParseAddr("10.0.0.5")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := proto.Marshal(a.response(addr)); err != nil {
			b.Fatal(err)
		}
	}
}
