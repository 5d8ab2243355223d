package hcm

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// defaultRouteTimeout is Envoy's default route timeout.
const defaultRouteTimeout = 15 * time.Second

// RouteTable is a parsed RouteConfiguration.
type RouteTable struct {
	Name         string
	VirtualHosts []*VirtualHost
	headerOps    headerOps
	perFilter    map[string]any
}

// VirtualHost is a parsed virtual host.
type VirtualHost struct {
	Name       string
	Domains    []string
	Routes     []*Route
	RateLimits []*routev3.RateLimit
	headerOps  headerOps
	perFilter  map[string]any
}

// Route is a parsed route: a match and either a cluster or a direct response.
type Route struct {
	Name          string
	prefix        string
	path          string
	sepPrefix     string
	regex         *regexp.Regexp
	caseSensitive bool

	Cluster            string
	Timeout            time.Duration
	PrefixRewrite      string
	HostRewriteLiteral string
	DirectStatus       int
	DirectBody         string
	RateLimits         []*routev3.RateLimit
	IncludeVhRateLimit bool
	headerOps          headerOps
	perFilter          map[string]any
	vhost              *VirtualHost
	table              *RouteTable
}

// ParseRouteTable validates rc; per-filter configs are parsed with the filter registry.
func ParseRouteTable(rc *routev3.RouteConfiguration) (*RouteTable, error) {
	t := &RouteTable{Name: rc.GetName()}
	var err error
	if t.headerOps, err = parseHeaderOps(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, fmt.Errorf("route config %s: %w", t.Name, err)
	}
	if t.perFilter, err = parsePerFilter(rc.GetTypedPerFilterConfig()); err != nil {
		return nil, fmt.Errorf("route config %s: %w", t.Name, err)
	}
	if rc.GetVhds() != nil {
		return nil, fmt.Errorf("route config %s: vhds is not supported by the stand-in", t.Name)
	}
	for _, vh := range rc.GetVirtualHosts() {
		v, err := parseVirtualHost(t, vh)
		if err != nil {
			return nil, fmt.Errorf("route config %s: %w", t.Name, err)
		}
		t.VirtualHosts = append(t.VirtualHosts, v)
	}
	return t, nil
}

func parseVirtualHost(t *RouteTable, vh *routev3.VirtualHost) (*VirtualHost, error) {
	v := &VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains(), RateLimits: vh.GetRateLimits(), perFilter: nil}
	if len(v.Domains) == 0 {
		return nil, fmt.Errorf("virtual host %s has no domains", v.Name)
	}
	if vh.GetRequireTls() != routev3.VirtualHost_NONE || vh.GetRetryPolicy() != nil || len(vh.GetRequestMirrorPolicies()) > 0 {
		return nil, fmt.Errorf("virtual host %s: require_tls, retry_policy and mirrors are not supported by the stand-in", v.Name)
	}
	var err error
	if v.headerOps, err = parseHeaderOps(vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(), vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove()); err != nil {
		return nil, fmt.Errorf("virtual host %s: %w", v.Name, err)
	}
	if v.perFilter, err = parsePerFilter(vh.GetTypedPerFilterConfig()); err != nil {
		return nil, fmt.Errorf("virtual host %s: %w", v.Name, err)
	}
	for i, r := range vh.GetRoutes() {
		rt, err := parseRoute(r)
		if err != nil {
			return nil, fmt.Errorf("virtual host %s route %d (%s): %w", v.Name, i, r.GetName(), err)
		}
		rt.vhost, rt.table = v, t
		v.Routes = append(v.Routes, rt)
	}
	return v, nil
}

func parseRoute(r *routev3.Route) (*Route, error) {
	m := r.GetMatch()
	rt := &Route{Name: r.GetName(), caseSensitive: true}
	if m.GetCaseSensitive() != nil {
		rt.caseSensitive = m.GetCaseSensitive().GetValue()
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rt.prefix = ps.Prefix
	case *routev3.RouteMatch_Path:
		rt.path = ps.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		rt.sepPrefix = ps.PathSeparatedPrefix
	case *routev3.RouteMatch_SafeRegex:
		re, err := regexp.Compile("^(?:" + ps.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("safe_regex: %w", err)
		}
		rt.regex = re
	default:
		return nil, fmt.Errorf("path matcher %T is not supported by the stand-in (prefix, path, path_separated_prefix, safe_regex only)", ps)
	}
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetGrpc() != nil || m.GetTlsContext() != nil ||
		len(m.GetDynamicMetadata()) > 0 || m.GetRuntimeFraction() != nil || len(m.GetCookies()) > 0 || m.GetFilterState() != nil {
		return nil, errors.New("only path matching is supported by the stand-in (no headers, query, grpc, tls, metadata, runtime matchers)")
	}
	if r.GetDecorator() != nil || r.GetTracing() != nil {
		return nil, errors.New("route decorator and tracing are not supported by the stand-in")
	}
	var err error
	if rt.headerOps, err = parseHeaderOps(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	if rt.perFilter, err = parsePerFilter(r.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		ra := a.Route
		if ra.GetCluster() == "" {
			return nil, errors.New("route action must name a cluster (weighted_clusters, cluster_header and plugins are not supported by the stand-in)")
		}
		if ra.GetRegexRewrite() != nil || ra.GetPathRewritePolicy() != nil || ra.GetRetryPolicy() != nil || ra.GetRetryPolicyTypedConfig() != nil ||
			len(ra.GetRequestMirrorPolicies()) > 0 || ra.GetHostRewriteHeader() != "" || ra.GetHostRewritePathRegex() != nil || ra.GetAutoHostRewrite().GetValue() ||
			len(ra.GetUpgradeConfigs()) > 0 || ra.GetInternalRedirectPolicy() != nil || ra.GetHedgePolicy() != nil {
			return nil, errors.New("route action uses features the stand-in does not implement (rewrites other than prefix/host literal, retries, mirrors, upgrades, redirects, hedging)")
		}
		rt.Cluster = ra.GetCluster()
		rt.Timeout = defaultRouteTimeout
		if ra.GetTimeout() != nil {
			rt.Timeout = ra.GetTimeout().AsDuration()
		}
		rt.PrefixRewrite = ra.GetPrefixRewrite()
		rt.HostRewriteLiteral = ra.GetHostRewriteLiteral()
		rt.RateLimits = ra.GetRateLimits()
		//lint:ignore SA1019 Envoy still honours the deprecated field.
		rt.IncludeVhRateLimit = ra.GetIncludeVhRateLimits().GetValue()
	case *routev3.Route_DirectResponse:
		rt.DirectStatus = int(a.DirectResponse.GetStatus())
		if b := a.DirectResponse.GetBody(); b != nil {
			switch {
			case b.GetInlineString() != "":
				rt.DirectBody = b.GetInlineString()
			case b.GetInlineBytes() != nil:
				rt.DirectBody = string(b.GetInlineBytes())
			default:
				return nil, errors.New("direct_response body must be inline")
			}
		}
	default:
		return nil, fmt.Errorf("route action %T is not supported by the stand-in", r.GetAction())
	}
	return rt, nil
}

// Match finds the route for a request, or nil.
func (t *RouteTable) Match(authority, path string, stripPort bool) *Route {
	if t == nil {
		return nil
	}
	host := strings.ToLower(authority)
	if stripPort {
		host = stripHostPort(host)
	}
	vh := t.selectVirtualHost(host)
	if vh == nil {
		return nil
	}
	pathOnly := path
	if i := strings.IndexAny(pathOnly, "?#"); i >= 0 {
		pathOnly = pathOnly[:i]
	}
	for _, r := range vh.Routes {
		if r.matches(pathOnly) {
			return r
		}
	}
	return nil
}

func stripHostPort(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.LastIndex(h, "]"); i >= 0 {
			return h[:i+1]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.Count(h, ":") == 1 {
		return h[:i]
	}
	return h
}

func (t *RouteTable) selectVirtualHost(host string) *VirtualHost {
	var best *VirtualHost
	bestLen, bestKind := -1, 4
	for _, vh := range t.VirtualHosts {
		for _, d := range vh.Domains {
			d = strings.ToLower(d)
			kind, n := 4, 0
			switch {
			case d == host:
				kind, n = 0, len(d)
			case d == "*":
				kind = 3
			case strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:]) && len(host) > len(d)-1:
				kind, n = 1, len(d)
			case strings.HasSuffix(d, "*") && strings.HasPrefix(host, d[:len(d)-1]) && len(host) > len(d)-1:
				kind, n = 2, len(d)
			default:
				continue
			}
			if kind < bestKind || (kind == bestKind && n > bestLen) {
				best, bestKind, bestLen = vh, kind, n
			}
		}
	}
	return best
}

func (r *Route) matches(path string) bool {
	p := path
	cmp := func(a, b string) bool { return a == b }
	if !r.caseSensitive {
		cmp = strings.EqualFold
	}
	switch {
	case r.regex != nil:
		return r.regex.MatchString(p)
	case r.path != "":
		return cmp(p, r.path)
	case r.sepPrefix != "":
		if len(p) < len(r.sepPrefix) || !cmp(p[:len(r.sepPrefix)], r.sepPrefix) {
			return false
		}
		return len(p) == len(r.sepPrefix) || p[len(r.sepPrefix)] == '/'
	default:
		return len(p) >= len(r.prefix) && cmp(p[:len(r.prefix)], r.prefix)
	}
}

// perFilterConfig returns the most specific per-filter config for filter name (route, then
// virtual host, then route table), or nil.
func (r *Route) perFilterConfig(name string) any {
	if r == nil {
		return nil
	}
	for _, m := range []map[string]any{r.perFilter, r.vhost.perFilter, r.table.perFilter} {
		if c, ok := m[name]; ok {
			return c
		}
	}
	return nil
}

// filterDisabled is the parsed form of a FilterConfig{disabled: true}.
type filterDisabled struct{}

func parsePerFilter(m map[string]*anypb.Any) (map[string]any, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]any, len(m))
	for name, a := range m {
		if a.GetTypeUrl() == "type.googleapis.com/envoy.config.route.v3.FilterConfig" {
			var fc routev3.FilterConfig
			if err := a.UnmarshalTo(&fc); err != nil {
				return nil, fmt.Errorf("typed_per_filter_config[%s]: %w", name, err)
			}
			if fc.GetDisabled() {
				out[name] = filterDisabled{}
				continue
			}
			if fc.GetConfig() == nil {
				continue
			}
			a = fc.GetConfig()
		}
		c, err := parsePerFilterTyped(a)
		if err != nil {
			return nil, fmt.Errorf("typed_per_filter_config[%s]: %w", name, err)
		}
		out[name] = c
	}
	return out, nil
}

// headerOps are request/response headers to add and remove.
type headerOps struct {
	reqAdd    []headerAdd
	reqRemove []string
	respAdd   []headerAdd
	respRem   []string
}

type headerAdd struct {
	key    string
	value  *format
	action corev3.HeaderValueOption_HeaderAppendAction
}

func parseHeaderOps(reqAdd []*corev3.HeaderValueOption, reqRem []string, respAdd []*corev3.HeaderValueOption, respRem []string) (headerOps, error) {
	var ops headerOps
	conv := func(in []*corev3.HeaderValueOption) ([]headerAdd, error) {
		var out []headerAdd
		for _, o := range in {
			v := o.GetHeader().GetValue()
			if o.GetHeader().GetRawValue() != nil {
				v = string(o.GetHeader().GetRawValue())
			}
			f, err := parseFormat(v)
			if err != nil {
				return nil, fmt.Errorf("header %s: %w", o.GetHeader().GetKey(), err)
			}
			act := o.GetAppendAction()
			//lint:ignore SA1019 Envoy still honours the deprecated append field.
			if appendField := o.GetAppend(); appendField != nil {
				if appendField.GetValue() {
					act = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
				} else {
					act = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
				}
			}
			out = append(out, headerAdd{key: strings.ToLower(o.GetHeader().GetKey()), value: f, action: act})
		}
		return out, nil
	}
	var err error
	if ops.reqAdd, err = conv(reqAdd); err != nil {
		return ops, err
	}
	if ops.respAdd, err = conv(respAdd); err != nil {
		return ops, err
	}
	ops.reqRemove, ops.respRem = lower(reqRem), lower(respRem)
	return ops, nil
}

func lower(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = strings.ToLower(s)
	}
	return out
}

// applyAdd applies one header-to-add with Envoy's append_action semantics.
func applyAdd(h *Headers, key, value string, action corev3.HeaderValueOption_HeaderAppendAction) {
	switch action {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		h.Add(key, value)
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		if !h.Has(key) {
			h.Add(key, value)
		}
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		h.Set(key, value)
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		if h.Has(key) {
			h.Set(key, value)
		}
	}
}
