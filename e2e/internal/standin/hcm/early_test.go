package hcm

import (
	"net/netip"
	"strings"
	"testing"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func remove(h string) *mutationv3.HeaderMutation {
	return &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Remove{Remove: h}}
}

func appendHeader(k, v string, action corev3.HeaderValueOption_HeaderAppendAction) *mutationv3.HeaderMutation {
	return &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: action}}}
}

func removeOnMatch(m *matcherv3.StringMatcher) *mutationv3.HeaderMutation {
	return &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_RemoveOnMatch_{
		RemoveOnMatch: &mutationv3.HeaderMutation_RemoveOnMatch{KeyMatcher: m}}}
}

// earlyExtension packs mutations as the header_mutation early header mutation extension.
func earlyExtension(t *testing.T, ms ...*mutationv3.HeaderMutation) *corev3.TypedExtensionConfig {
	t.Helper()
	a, err := anypb.New(&earlymutationv3.HeaderMutation{Mutations: ms})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TypedExtensionConfig{Name: "envoy.http.early_header_mutation.header_mutation", TypedConfig: a}
}

// TestEarlyHeaderMutation: the mutations of Envoy's header_mutation extension apply in order, with
// Envoy's semantics (source/common/http/header_mutation.cc): remove drops every value of a name
// (any case), remove_on_match every header whose name matches, append follows append_action (or
// the deprecated append), skips an empty value unless keep_empty_value, formats its value, and
// each mutation sees what the previous ones left.
func TestEarlyHeaderMutation(t *testing.T) {
	base := Headers{{"traceparent", "00-vm"}, {"tracestate", "vm=1"}, {"x-a", "1"}, {"x-a", "2"}, {"x-b3-traceid", "1"}, {"x-b3-sampled", "1"}}
	tests := map[string]struct {
		exts []*mutationv3.HeaderMutation
		want Headers
	}{
		"remove drops every value, whatever the case of the name": {
			exts: []*mutationv3.HeaderMutation{remove("TraceParent"), remove("x-a"), remove("absent")},
			want: Headers{{"tracestate", "vm=1"}, {"x-b3-traceid", "1"}, {"x-b3-sampled", "1"}},
		},
		"remove_on_match drops every name it matches": {
			exts: []*mutationv3.HeaderMutation{removeOnMatch(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "x-b3-"}})},
			want: Headers{{"traceparent", "00-vm"}, {"tracestate", "vm=1"}, {"x-a", "1"}, {"x-a", "2"}},
		},
		"append adds by default": {
			exts: []*mutationv3.HeaderMutation{appendHeader("x-a", "3", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)},
			want: append(base[:6:6], Header{"x-a", "3"}),
		},
		"overwrite replaces every value": {
			exts: []*mutationv3.HeaderMutation{appendHeader("x-a", "3", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
			want: Headers{{"traceparent", "00-vm"}, {"tracestate", "vm=1"}, {"x-a", "3"}, {"x-b3-traceid", "1"}, {"x-b3-sampled", "1"}},
		},
		"add_if_absent and overwrite_if_exists leave what they must": {
			exts: []*mutationv3.HeaderMutation{
				appendHeader("x-a", "3", corev3.HeaderValueOption_ADD_IF_ABSENT),
				appendHeader("x-new", "3", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
				appendHeader("x-new2", "4", corev3.HeaderValueOption_ADD_IF_ABSENT),
			},
			want: append(base[:6:6], Header{"x-new2", "4"}),
		},
		"deprecated append false overwrites": {
			exts: []*mutationv3.HeaderMutation{{Action: &mutationv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
				//lint:ignore SA1019 the deprecated field is what this case tests.
				Header: &corev3.HeaderValue{Key: "tracestate", Value: "ours=1"}, Append: wrapperspb.Bool(false)}}}},
			want: Headers{{"traceparent", "00-vm"}, {"tracestate", "ours=1"}, {"x-a", "1"}, {"x-a", "2"}, {"x-b3-traceid", "1"}, {"x-b3-sampled", "1"}},
		},
		"an empty value is not added unless keep_empty_value": {
			exts: []*mutationv3.HeaderMutation{
				appendHeader("x-empty", "", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
				{Action: &mutationv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
					Header: &corev3.HeaderValue{Key: "x-kept", Value: ""}, KeepEmptyValue: true}}},
				// Envoy formats header.value only: raw_value alone is an empty value.
				{Action: &mutationv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
					Header: &corev3.HeaderValue{Key: "x-raw", RawValue: []byte("ignored")}}}},
			},
			want: append(base[:6:6], Header{"x-kept", ""}),
		},
		"values are formatted, in order": {
			exts: []*mutationv3.HeaderMutation{
				remove("x-a"),
				appendHeader("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(x-a)%", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
				appendHeader("x-copy", "%REQ(x-client)%", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
			},
			want: Headers{{"traceparent", "00-vm"}, {"tracestate", "vm=1"}, {"x-b3-traceid", "1"}, {"x-b3-sampled", "1"}, {"x-client", "10.0.0.5 "}, {"x-copy", "10.0.0.5 "}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ms, err := parseEarlyMutations([]*corev3.TypedExtensionConfig{earlyExtension(t, tc.exts...)})
			if err != nil {
				t.Fatal(err)
			}
			s := &Stream{Headers: append(Headers{}, base...), Remote: netip.MustParseAddrPort("10.0.0.5:4000")}
			for _, m := range ms {
				m.mutate(s)
			}
			if diff := cmp.Diff(tc.want, s.Headers); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEarlyHeaderMutationRejected: what Envoy refuses when it creates the extension is NACKed, and
// so is what the stand-in does not implement.
func TestEarlyHeaderMutationRejected(t *testing.T) {
	other, err := anypb.New(&wrapperspb.StringValue{})
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		ext  *corev3.TypedExtensionConfig
		want string
	}{
		"another extension":            {&corev3.TypedExtensionConfig{Name: "envoy.http.early_header_mutation.regex_mutation", TypedConfig: other}, "not implemented by the stand-in"},
		"no mutations":                 {earlyExtension(t), "at least 1 item"},
		"a mutation without an action": {earlyExtension(t, &mutationv3.HeaderMutation{}), "Action"},
		"a name with a newline":        {earlyExtension(t, remove("x\nb")), "Remove"},
		"append and append_action": {earlyExtension(t, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
			//lint:ignore SA1019 the deprecated field is what this case tests.
			Header: &corev3.HeaderValue{Key: "x-a", Value: "1"}, Append: wrapperspb.Bool(true), AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT}}}), "both append and append_action"},
		"append to a pseudo-header": {earlyExtension(t, appendHeader(":path", "/x", 0)), "may not be modified"},
		"append to host":            {earlyExtension(t, appendHeader("Host", "evil", 0)), "may not be modified"},
		"unknown substitution":      {earlyExtension(t, appendHeader("x-a", "%START_TIME%", 0)), "not supported by the stand-in"},
		"remove a pseudo-header":    {earlyExtension(t, remove(":path")), "removing pseudo-headers"},
		"remove_on_match matching a pseudo-header": {earlyExtension(t, removeOnMatch(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "path"}})), "matches :path"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := parseEarlyMutations([]*corev3.TypedExtensionConfig{tc.ext})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestEarlyHeaderMutationRunsFirst: the early mutations run before the connection manager's own
// header handling, as in Envoy (first thing in mutateRequestHeaders): an x-forwarded-for they add
// decides the remote address (use_remote_address off), and an x-envoy-internal they add is
// removed like one the client sent.
func TestEarlyHeaderMutationRunsFirst(t *testing.T) {
	m := minimalHCM(t)
	m.EarlyHeaderMutationExtensions = []*corev3.TypedExtensionConfig{earlyExtension(t,
		remove("x-forwarded-for"),
		appendHeader("x-forwarded-for", "192.0.2.7", 0),
		appendHeader("x-envoy-internal", "true", 0))}
	c, err := Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	peer := netip.MustParseAddrPort("10.0.0.5:4000")
	s := &Stream{cfg: c, Scheme: "http", DirectRemote: peer, Remote: peer, Headers: Headers{{"x-forwarded-for", "6.6.6.6"}}}
	s.mutateRequestHeaders()
	if got := s.Remote.Addr().String(); got != "192.0.2.7" {
		t.Errorf("remote = %s, want the address the early mutation set", got)
	}
	if s.Headers.Has("x-envoy-internal") {
		t.Error("x-envoy-internal added by the early mutation survived mutateRequestHeaders")
	}
}

func packAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// minimalHCM is an HTTP connection manager the stand-in accepts: an inline route sending
// everything to cluster nova, and the router.
func minimalHCM(t *testing.T) *hcmv3.HttpConnectionManager {
	t.Helper()
	return &hcmv3.HttpConnectionManager{
		StatPrefix: "test",
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "nova"}}},
			}}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: RouterFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: packAny(t, &routerv3.Router{})}}},
	}
}
