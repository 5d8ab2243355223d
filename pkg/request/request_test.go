package request

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

const netID = "6a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"

// envoyRequest builds a request_headers message exactly as Envoy's ext_proc filter sends it:
// lower-cased keys, values in raw_value, the requested attributes under the filter's name.
func envoyRequest(source string, headers ...string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(headers); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: headers[i], RawValue: []byte(headers[i+1])})
	}
	req := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}},
	}
	if source != "" {
		req.Attributes = map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(source),
		}}}
	}
	return req
}

func TestDecode(t *testing.T) {
	netMD := metadata.Pairs(contract.NetworkIDMetadata, netID)
	tests := map[string]struct {
		md         metadata.MD
		source     string
		headers    []string
		want       resolve.Query
		wantStatus int
	}{
		"ipv4 network mode": {md: netMD, source: "10.0.0.5:41234",
			want: resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: netID}, Addr: netip.MustParseAddr("10.0.0.5")}},
		"router mode": {md: metadata.Pairs(contract.RouterIDMetadata, "r1"), source: "10.0.0.5:1",
			want: resolve.Query{Scope: resolve.Scope{Kind: resolve.KindRouter, ID: "r1"}, Addr: netip.MustParseAddr("10.0.0.5")}},
		"ipv6 global": {md: netMD, source: "[2001:db8::5]:80",
			want: resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: netID}, Addr: netip.MustParseAddr("2001:db8::5")}},
		"ipv4-mapped ipv6 becomes ipv4": {md: netMD, source: "[::ffff:10.0.0.5]:41234",
			want: resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: netID}, Addr: netip.MustParseAddr("10.0.0.5")}},
		"link-local with zone drops the zone": {md: netMD, source: "[fe80::f816:3eff:fe12:3456%ns-eth0]:5000",
			want: resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: netID}, Addr: netip.MustParseAddr("fe80::f816:3eff:fe12:3456")}},
		"address without port": {md: netMD, source: "10.0.0.5",
			want: resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: netID}, Addr: netip.MustParseAddr("10.0.0.5")}},
		"vm headers never choose the identity": {md: netMD, source: "10.0.0.5:1",
			headers: []string{"x-forwarded-for", "10.0.0.99", "x-neutron-network-id", "evil", "x-neutron-router-id", "evil"},
			want:    resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: netID}, Addr: netip.MustParseAddr("10.0.0.5")}},
		"both network and router":          {md: metadata.Pairs(contract.NetworkIDMetadata, netID, contract.RouterIDMetadata, "r1"), source: "10.0.0.5:1", wantStatus: 400},
		"neither network nor router":       {md: metadata.MD{}, source: "10.0.0.5:1", wantStatus: 400},
		"two network ids":                  {md: metadata.Pairs(contract.NetworkIDMetadata, netID, contract.NetworkIDMetadata, "other"), source: "10.0.0.5:1", wantStatus: 400},
		"network id with query characters": {md: metadata.Pairs(contract.NetworkIDMetadata, "x&device_id=y"), source: "10.0.0.5:1", wantStatus: 400},
		"empty network id":                 {md: metadata.Pairs(contract.NetworkIDMetadata, ""), source: "10.0.0.5:1", wantStatus: 400},
		"no source attribute":              {md: netMD, wantStatus: 500},
		"garbage source":                   {md: netMD, source: "not-an-ip:80", wantStatus: 500},
		"unspecified source":               {md: netMD, source: "0.0.0.0:80", wantStatus: 500},
		"multicast source":                 {md: netMD, source: "[ff02::1]:80", wantStatus: 500},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Decode(metadata.NewIncomingContext(context.Background(), tc.md), envoyRequest(tc.source, tc.headers...))
			if tc.wantStatus != 0 {
				var re *Error
				if !errors.As(err, &re) || re.Status != tc.wantStatus {
					t.Fatalf("err = %v, want status %d", err, tc.wantStatus)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("query = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	e := badRequest("x %d", 1)
	if e.Error() != "400 Bad Request: x 1" || e.Status != http.StatusBadRequest {
		t.Errorf("got %q", e.Error())
	}
}
