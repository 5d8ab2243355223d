package translate

import (
	"testing"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	"github.com/google/go-cmp/cmp"
)

// TestEarlyHeaderMutationRemovesVMTraceContext: every listener's HTTP connection manager, with
// Envoy's tracing on or off, has exactly one early header mutation, Envoy's header_mutation
// extension, that removes exactly the W3C trace context and baggage, x-client-trace-id and the
// B3 headers, adds nothing, and passes the extension's validation rules (Envoy's
// downcastAndValidate).
func TestEarlyHeaderMutationRemovesVMTraceContext(t *testing.T) {
	want := []string{
		"traceparent", "tracestate", "baggage", "x-client-trace-id",
		"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
	}
	for name, tc := range goldenCases {
		t.Run(name, func(t *testing.T) {
			sh := sharedFor(t, tc.settings)
			for _, n := range append(tc.nets, network(net2, "tap0a6e3c52-9f")) {
				ls, err := sh.Listeners(n)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ls {
					var m hcmv3.HttpConnectionManager
					if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
						t.Fatalf("%s: %v", l.GetName(), err)
					}
					ext := m.GetEarlyHeaderMutationExtensions()
					if len(ext) != 1 || ext[0].GetName() != "envoy.http.early_header_mutation.header_mutation" {
						t.Fatalf("%s: early_header_mutation_extensions %v, want the header_mutation extension alone", l.GetName(), ext)
					}
					var hm earlymutationv3.HeaderMutation
					if err := ext[0].GetTypedConfig().UnmarshalTo(&hm); err != nil {
						t.Fatalf("%s: %v", l.GetName(), err)
					}
					if err := hm.ValidateAll(); err != nil {
						t.Errorf("%s: %v", l.GetName(), err)
					}
					var removed []string
					for _, mu := range hm.GetMutations() {
						r, ok := mu.GetAction().(*mutationv3.HeaderMutation_Remove)
						if !ok {
							t.Errorf("%s: mutation %v is not a remove", l.GetName(), mu)
							continue
						}
						removed = append(removed, r.Remove)
					}
					if diff := cmp.Diff(want, removed); diff != "" {
						t.Errorf("%s: removed headers (-want +got):\n%s", l.GetName(), diff)
					}
				}
			}
		})
	}
}
