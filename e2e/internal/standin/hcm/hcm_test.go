package hcm

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func set(k, value, raw string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	hv := &corev3.HeaderValue{Key: k, Value: value}
	if raw != "" {
		hv.RawValue = []byte(raw)
	}
	return &corev3.HeaderValueOption{Header: hv, AppendAction: action}
}

func TestApplyMutation(t *testing.T) {
	base := Headers{{"x-a", "1"}, {"x-a", "2"}, {"x-tenant-id", "forged"}}
	tests := map[string]struct {
		m            *extprocv3.HeaderMutation
		rules        *mutationv3.HeaderMutationRules
		want         Headers
		wantRejected int
		wantErr      bool
	}{
		"raw_value overwrites every value by default": {
			m:    &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-a", "", "new", 0)}},
			want: Headers{{"x-a", "new"}, {"x-tenant-id", "forged"}},
		},
		"value without raw_value becomes empty": {
			m:    &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-b", "ignored", "", 0)}},
			want: append(base[:3:3], Header{"x-b", ""}),
		},
		"value and raw_value together is an error": {
			m:       &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-b", "v", "r", 0)}},
			wantErr: true,
		},
		"deprecated append true appends": {
			m: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
				Header: &corev3.HeaderValue{Key: "x-a", RawValue: []byte("3")}, Append: wrapperspb.Bool(true),
			}}},
			want: append(base[:3:3], Header{"x-a", "3"}),
		},
		"ADD_IF_ABSENT keeps an existing header": {
			m:    &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-a", "", "3", corev3.HeaderValueOption_ADD_IF_ABSENT)}},
			want: base,
		},
		"OVERWRITE_IF_EXISTS does not add": {
			m:    &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-c", "", "3", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS)}},
			want: base,
		},
		"remove_headers removes every value": {
			m:    &extprocv3.HeaderMutation{RemoveHeaders: []string{"X-Tenant-ID", "x-a"}},
			want: Headers{},
		},
		"host and x-envoy headers are ignored by default rules": {
			m: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				set("host", "", "evil", 0), set("x-envoy-foo", "", "1", 0),
			}},
			want:         base,
			wantRejected: 2,
		},
		"disallow_is_error turns an ignored mutation into an error": {
			m:       &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set(":authority", "", "evil", 0)}},
			rules:   &mutationv3.HeaderMutationRules{DisallowIsError: wrapperspb.Bool(true)},
			wantErr: true,
		},
		"pseudo-headers cannot be removed": {
			m:            &extprocv3.HeaderMutation{RemoveHeaders: []string{":path"}},
			want:         base,
			wantRejected: 1,
		},
		"invalid value is an error": {
			m:       &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-a", "", "a\r\nb", 0)}},
			wantErr: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rules, err := parseRules(tc.rules)
			if err != nil {
				t.Fatal(err)
			}
			h := append(Headers{}, base...)
			rejected, err := applyMutation(&h, tc.m, rules, nil)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if diff := cmp.Diff(tc.want, h, cmp.Comparer(func(a, b Headers) bool { return len(a) == 0 && len(b) == 0 || cmp.Equal([]Header(a), []Header(b)) })); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			if rejected != tc.wantRejected {
				t.Errorf("rejected = %d, want %d", rejected, tc.wantRejected)
			}
		})
	}
}

func TestRouteMatch(t *testing.T) {
	rc := &routev3.RouteConfiguration{Name: "rc", VirtualHosts: []*routev3.VirtualHost{
		{Name: "any", Domains: []string{"*"}, Routes: []*routev3.Route{
			{Name: "exact", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/latest"}}, Action: direct(200)},
			{Name: "prefix", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/openstack"}}, Action: direct(200)},
		}},
		{Name: "meta", Domains: []string{"169.254.169.254"}, Routes: []*routev3.Route{
			{Name: "all", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: direct(200)},
		}},
	}}
	table, err := ParseRouteTable(rc)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		authority, path string
		want            string
	}{
		"exact domain wins over *":              {"169.254.169.254", "/latest", "all"},
		"a port is part of the host (no strip)": {"169.254.169.254:80", "/openstack/x", "prefix"},
		"* domain, exact path, query ignored":   {"other", "/latest?x=1", "exact"},
		"* domain, prefix":                      {"other", "/openstack/latest/meta_data.json", "prefix"},
		"no route":                              {"other", "/nothing", ""},
		"exact path does not match as prefix":   {"other", "/latest/meta-data", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := ""
			if r := table.Match(tc.authority, tc.path, false); r != nil {
				got = r.Name
			}
			if got != tc.want {
				t.Errorf("route = %q, want %q", got, tc.want)
			}
		})
	}
}

func direct(code uint32) *routev3.Route_DirectResponse {
	return &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: code}}
}

// TestRateLimitPerClient uses the descriptor shape pkg/xds/translate produces: a generic key and a
// remote_address entry without value (one bucket per client address).
func TestRateLimitPerClient(t *testing.T) {
	cfg, err := anypb.New(&localrlv3.LocalRateLimit{
		StatPrefix: "rl",
		Descriptors: []*ratelimitv3.LocalRateLimitDescriptor{{
			Entries:     []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "generic_key", Value: "base"}, {Key: "remote_address"}},
			TokenBucket: &typev3.TokenBucket{MaxTokens: 2, TokensPerFill: wrapperspb.UInt32(2), FillInterval: durationpb.New(time.Hour)},
		}},
		RateLimits: []*routev3.RateLimit{{Actions: []*routev3.RateLimit_Action{
			{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorValue: "base"}}},
			{ActionSpecifier: &routev3.RateLimit_Action_RemoteAddress_{RemoteAddress: &routev3.RateLimit_Action_RemoteAddress{}}},
		}}},
		AlwaysConsumeDefaultTokenBucket: wrapperspb.Bool(false),
	})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := parseRateLimit(cfg)
	if err != nil {
		t.Fatal(err)
	}
	allow := func(ip string) bool {
		s := &Stream{Remote: netip.AddrPortFrom(netip.MustParseAddr(ip), 1234)}
		return rl.allow(descriptorsFor(s, rl.rateLimits, 0))
	}
	got := []bool{allow("10.0.0.5"), allow("10.0.0.5"), allow("10.0.0.5"), allow("10.0.0.6")}
	if diff := cmp.Diff([]bool{true, true, false, true}, got); diff != "" {
		t.Errorf("allowed (-want +got):\n%s", diff)
	}
}

func TestRemoteAddress(t *testing.T) {
	peer := netip.MustParseAddrPort("10.0.0.5:4000")
	tests := map[string]struct {
		useRemote bool
		skipXFF   bool
		xff       string
		wantAddr  string
		wantXFF   string
	}{
		"use_remote_address appends the peer":                    {useRemote: true, xff: "6.6.6.6", wantAddr: "10.0.0.5:4000", wantXFF: "6.6.6.6,10.0.0.5"},
		"skip_xff_append leaves xff alone":                       {useRemote: true, skipXFF: true, xff: "6.6.6.6", wantAddr: "10.0.0.5:4000", wantXFF: "6.6.6.6"},
		"without use_remote_address the last xff hop is trusted": {xff: "1.1.1.1, 6.6.6.6", wantAddr: "6.6.6.6:0", wantXFF: "1.1.1.1, 6.6.6.6"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := &Stream{cfg: &Config{useRemoteAddress: tc.useRemote, skipXffAppend: tc.skipXFF}, Scheme: "http", DirectRemote: peer, Remote: peer,
				Headers: Headers{{"x-forwarded-for", tc.xff}}}
			s.mutateRequestHeaders()
			if got := s.Remote.String(); got != tc.wantAddr {
				t.Errorf("remote = %s, want %s", got, tc.wantAddr)
			}
			if got, _ := s.Headers.Get("x-forwarded-for"); got != tc.wantXFF {
				t.Errorf("x-forwarded-for = %q, want %q", got, tc.wantXFF)
			}
		})
	}
}

// TestExternalRequestHeaders: every request is external, so Envoy's control headers a client sent
// are removed (ConnectionManagerUtility::cleanInternalHeaders), with use_remote_address those naming
// the downstream too, and an edge request carries x-envoy-external-address.
func TestExternalRequestHeaders(t *testing.T) {
	peer := netip.MustParseAddrPort("10.0.0.5:4000")
	sent := Headers{{"x-envoy-force-trace", "1"}, {"x-envoy-retry-on", "5xx"}, {"x-envoy-internal", "true"},
		{"x-envoy-decorator-operation", "vm"}, {"x-envoy-external-address", "6.6.6.6"}, {"x-envoy-foo", "kept"}}
	for name, tc := range map[string]struct {
		useRemote bool
		want      Headers
	}{
		"edge request": {true, Headers{{"x-envoy-external-address", "10.0.0.5"}, {"x-envoy-foo", "kept"}}},
		"external, not edge": {false, Headers{{"x-envoy-decorator-operation", "vm"}, {"x-envoy-external-address", "6.6.6.6"},
			{"x-envoy-foo", "kept"}}},
	} {
		t.Run(name, func(t *testing.T) {
			s := &Stream{cfg: &Config{useRemoteAddress: tc.useRemote}, Scheme: "http", DirectRemote: peer, Remote: peer, Headers: append(Headers{}, sent...)}
			s.mutateRequestHeaders()
			var got Headers
			for _, h := range s.Headers {
				if strings.HasPrefix(h.Key, "x-envoy-") {
					got = append(got, h)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("x-envoy-* headers (-want +got):\n%s", diff)
			}
		})
	}
}
