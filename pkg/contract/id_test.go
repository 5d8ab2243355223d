package contract_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/request"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// ids is the one table both sides are tested with: what cmd/xds publishes a listener for is
// exactly what cmd/extproc answers for.
var ids = map[string]bool{
	"6a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9":   true, // what Neutron generates
	"6A1B2C3D-4E5F-4071-8293-A4B5C6D7E8F9":   true,
	"6a1b2c3d4e5f40718293a4b5c6d7e8f9":       true, // a UUID without dashes
	"net1":                                   true,
	"lab_net-2":                              true,
	strings.Repeat("a", contract.MaxIDLen):   true,
	"":                                       false,
	strings.Repeat("a", contract.MaxIDLen+1): false,
	"-leading-dash":                          false,
	"_leading-underscore":                    false,
	"net.1":                                  false, // cmd/xds took '.' before the rule was shared
	"../etc":                                 false,
	"a/b":                                    false,
	"x&device_id=y":                          false,
	"a%20b":                                  false,
	"a b":                                    false,
	"a\nb":                                   false,
	"naïve":                                  false,
}

func TestOneIDRuleOnBothSides(t *testing.T) {
	shared, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	for id, valid := range ids {
		t.Run(id, func(t *testing.T) {
			if got := contract.ValidID(id); got != valid {
				t.Fatalf("ValidID(%q) = %v, want %v", id, got, valid)
			}

			// cmd/xds: the networks file and the listener translation.
			doc, _ := json.Marshal(map[string]any{"nodes": map[string]any{"node-1": []map[string]string{{"id": id}}}})
			if _, err := source.ParseNetworks(doc, ""); (err == nil) != valid {
				t.Errorf("networks file with id %q: err %v, want valid %v", id, err, valid)
			}
			net := source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: "/var/run/netns/qdhcp-x"}
			res, err := shared.Node([]source.Network{net})
			if (err == nil && len(res.Listeners) > 0) != valid {
				t.Errorf("listener for id %q: %d listeners, err %v; want valid %v", id, len(res.Listeners), err, valid)
			}

			// cmd/extproc: a stream from such a listener.
			req := &extprocv3.ProcessingRequest{
				Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}},
				Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
					contract.SourceAddressAttribute: structpb.NewStringValue("10.0.0.5:41234")}}},
			}
			for _, key := range []string{contract.NetworkIDMetadata, contract.RouterIDMetadata} {
				q, err := request.Decode(metadata.NewIncomingContext(context.Background(), metadata.Pairs(key, id)), req)
				var re *request.Error
				switch {
				case valid && (err != nil || q.Scope.ID != id):
					t.Errorf("%s %q: query %+v, err %v; want it accepted", key, id, q, err)
				case !valid && (!errors.As(err, &re) || re.Status != http.StatusBadRequest):
					t.Errorf("%s %q: err %v, want a 400", key, id, err)
				}
			}
		})
	}
}
