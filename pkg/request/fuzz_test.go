package request

import (
	"context"
	"errors"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

// FuzzDecodeRequest feeds arbitrary metadata, attributes, addresses and whole serialized
// ProcessingRequests to Decode. It must never panic; every answer is a valid query or an *Error
// with a 4xx/5xx status.
func FuzzDecodeRequest(f *testing.F) {
	seed, _ := proto.Marshal(envoyRequest("10.0.0.5:41234", "x-instance-id", "evil", ":path", "/"))
	f.Add(netID, "", "10.0.0.5:41234", seed)
	f.Add("", "r1", "[fe80::1%eth0]:80", []byte{})
	f.Add(netID, "r1", "[::ffff:10.0.0.5]:1", []byte{0x0a, 0x02})
	f.Add("a&b", "", "999.1.1.1:80", []byte("garbage"))
	f.Fuzz(func(t *testing.T, network, router, source string, raw []byte) {
		md := metadata.MD{}
		if network != "" {
			md.Append(contract.NetworkIDMetadata, network)
		}
		if router != "" {
			md.Append(contract.RouterIDMetadata, router)
		}
		reqs := []*extprocv3.ProcessingRequest{envoyRequest(source)}
		var fromWire extprocv3.ProcessingRequest
		if proto.Unmarshal(raw, &fromWire) == nil {
			reqs = append(reqs, &fromWire)
		}
		for _, req := range reqs {
			q, err := Decode(metadata.NewIncomingContext(context.Background(), md), req)
			if err != nil {
				var re *Error
				if !errors.As(err, &re) || re.Status < 400 || re.Status > 599 {
					t.Fatalf("error %v is not an *Error with an HTTP error status", err)
				}
				continue
			}
			if !q.Addr.IsValid() || q.Addr.Zone() != "" || q.Addr.Is4In6() || !contract.ValidID(q.Scope.ID) {
				t.Fatalf("accepted a bad query %+v", q)
			}
		}
	})
}
