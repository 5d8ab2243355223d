package hcm

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func list(ms ...*matcherv3.StringMatcher) *matcherv3.ListStringMatcher {
	return &matcherv3.ListStringMatcher{Patterns: ms}
}

// extProcWith returns an ext_proc filter config that is valid for the stand-in, with forward_rules fr.
func extProcWith(t *testing.T, fr *extprocfv3.HeaderForwardingRules) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&extprocfv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "extproc"}}},
		ProcessingMode: &extprocfv3.ProcessingMode{ResponseHeaderMode: extprocfv3.ProcessingMode_SKIP},
		ForwardRules:   fr,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestForwardRules: the headers of the request_headers message are those Envoy's
// headerCanBeForwarded lets through, pseudo-headers included.
func TestForwardRules(t *testing.T) {
	all := []string{":authority", ":path", ":method", ":scheme", "user-agent", "x-instance-id", "traceparent"}
	tests := map[string]struct {
		fr   *extprocfv3.HeaderForwardingRules
		want []string
	}{
		"no rules: everything":    {nil, all},
		"empty rules: everything": {&extprocfv3.HeaderForwardingRules{}, all},
		"allow-list matching nothing a request has: nothing": {
			&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(exact(":status"))}, nil},
		"allow-list: only what it names, pseudo-headers too": {
			&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(exact(":path"), exact("user-agent"))}, []string{":path", "user-agent"}},
		"deny-list: all but what it names": {
			&extprocfv3.HeaderForwardingRules{DisallowedHeaders: list(&matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: ":"}})},
			[]string{"user-agent", "x-instance-id", "traceparent"}},
		"deny-list wins over allow-list": {
			&extprocfv3.HeaderForwardingRules{
				AllowedHeaders: list(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "x-"}}, exact("traceparent")),
				DisallowedHeaders: list(&matcherv3.StringMatcher{IgnoreCase: true,
					MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "INSTANCE"}})},
			[]string{"traceparent"}},
		"regex matches the whole name": {
			&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(&matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "trace.*|user"}}})},
			[]string{"traceparent"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := parseExtProc(extProcWith(t, tc.fr))
			if err != nil {
				t.Fatal(err)
			}
			s := &Stream{Method: "GET", Path: "/latest/meta-data/", Authority: "169.254.169.254", Scheme: "http",
				Headers: Headers{{"user-agent", "curl"}, {"x-instance-id", "forged"}, {"traceparent", "00-x"}},
				Remote:  netip.MustParseAddrPort("10.0.0.5:4000")}
			var got []string
			for _, h := range f.request(s, f.cfg).GetRequestHeaders().GetHeaders().GetHeaders() {
				got = append(got, h.GetKey())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("forwarded %v, want %v", got, tc.want)
			}
		})
	}
}

// TestForwardRulesRejected: what Envoy refuses at config time is NACKed.
func TestForwardRulesRejected(t *testing.T) {
	tests := map[string]struct {
		fr   *extprocfv3.HeaderForwardingRules
		want string
	}{
		"allow-list without patterns": {&extprocfv3.HeaderForwardingRules{AllowedHeaders: &matcherv3.ListStringMatcher{}}, "at least 1 item"},
		"deny-list without patterns":  {&extprocfv3.HeaderForwardingRules{DisallowedHeaders: &matcherv3.ListStringMatcher{}}, "at least 1 item"},
		"empty prefix": {&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{}})}, "Prefix"},
		"matcher without a pattern": {&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(&matcherv3.StringMatcher{})}, "MatchPattern"},
		"ignore_case with safe_regex": {&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(&matcherv3.StringMatcher{IgnoreCase: true,
			MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "x"}}})}, "ignore_case has no effect"},
		"regex that does not compile": {&extprocfv3.HeaderForwardingRules{AllowedHeaders: list(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "("}}})}, "safe_regex"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := parseExtProc(extProcWith(t, tc.fr))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestForwardRulesOnResponseHeaders: the same rules pick the upstream response headers sent on the
// stream after a mode_override, :status included.
func TestForwardRulesOnResponseHeaders(t *testing.T) {
	h := http.Header{"Content-Type": {"text/plain"}, "Set-Cookie": {"a=b"}}
	for name, tc := range map[string]struct {
		fr   forwardRules
		want []string
	}{
		"no rules":           {forwardRules{}, []string{":status", "content-type", "set-cookie"}},
		"only :status":       {mustRules(t, &extprocfv3.HeaderForwardingRules{AllowedHeaders: list(exact(":status"))}), []string{":status"}},
		"all but set-cookie": {mustRules(t, &extprocfv3.HeaderForwardingRules{DisallowedHeaders: list(exact("set-cookie"))}), []string{":status", "content-type"}},
	} {
		t.Run(name, func(t *testing.T) {
			hm, keys := responseHeaderMap(tc.fr, 403, h)
			var got []string
			for _, hv := range hm.GetHeaders() {
				got = append(got, hv.GetKey())
			}
			if !slices.Equal(got, tc.want) || len(keys) != len(h) {
				t.Errorf("forwarded %v (keys %v), want %v", got, keys, tc.want)
			}
		})
	}
}

func mustRules(t *testing.T, fr *extprocfv3.HeaderForwardingRules) forwardRules {
	t.Helper()
	r, err := parseForwardRules(fr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
