package hcm

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/cluster"
)

// Envoy's local reply bodies for upstream failures.
const (
	bodyConnectFailure = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	bodyResetFailure   = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
	bodyTimeout        = "upstream request timeout"
	bodyNoHealthy      = "no healthy upstream"
)

// router forwards the request to the route's cluster (envoy.filters.http.router).
type router struct {
	suppressEnvoyHeaders bool
}

func parseRouter(a *anypb.Any) (*router, error) {
	var r routerv3.Router
	if err := a.UnmarshalTo(&r); err != nil {
		return nil, err
	}
	if len(r.GetUpstreamHttpFilters()) > 0 {
		return nil, errors.New("upstream_http_filters are not supported by the stand-in")
	}
	return &router{suppressEnvoyHeaders: r.GetSuppressEnvoyHeaders()}, nil
}

func (rt *router) decodeHeaders(ctx context.Context, s *Stream, _ any) bool {
	route := s.Route()
	if route == nil {
		s.env.Stats.Inc("http." + s.cfg.StatPrefix + ".no_route")
		s.log.Info("no route (route_not_found)", "route_config", s.cfg.RDSName, "authority", s.Authority)
		s.sendLocalReply(http.StatusNotFound, "", nil)
		return false
	}
	if route.DirectStatus != 0 {
		s.sendLocalReply(route.DirectStatus, route.DirectBody, nil)
		return false
	}
	up := s.env.Clusters.Get(route.Cluster)
	if up == nil {
		s.env.Stats.Inc("http." + s.cfg.StatPrefix + ".no_cluster")
		s.sendLocalReply(http.StatusServiceUnavailable, "", nil)
		return false
	}
	// Header additions of the route table, virtual host and route, most specific last.
	for _, ops := range []headerOps{route.table.headerOps, route.vhost.headerOps, route.headerOps} {
		for _, k := range ops.reqRemove {
			s.Headers.Del(k)
		}
		for _, a := range ops.reqAdd {
			applyAdd(&s.Headers, a.key, a.value.render(s), a.action)
		}
	}
	path := s.Path
	if route.PrefixRewrite != "" && route.prefix != "" && strings.HasPrefix(path, route.prefix) {
		path = route.PrefixRewrite + path[len(route.prefix):]
	}
	host := s.Authority
	if route.HostRewriteLiteral != "" {
		host = route.HostRewriteLiteral
	}
	if route.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, route.Timeout)
		defer cancel()
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		s.sendLocalReply(http.StatusBadRequest, "", nil)
		return false
	}
	u.Scheme, u.Host = up.Scheme(), host
	var body io.ReadCloser
	if !s.endOfStream {
		body = s.body
	}
	req, err := http.NewRequestWithContext(ctx, s.Method, u.String(), body)
	if err != nil {
		s.sendLocalReply(http.StatusBadRequest, "", nil)
		return false
	}
	req.Host = host
	req.ContentLength = s.contentLength
	if s.endOfStream {
		req.ContentLength = 0
		req.Body = http.NoBody
	}
	for _, h := range s.Headers {
		if hopByHop[h.Key] || h.Key == "content-length" || strings.HasPrefix(h.Key, ":") {
			continue
		}
		req.Header[http.CanonicalHeaderKey(h.Key)] = append(req.Header[http.CanonicalHeaderKey(h.Key)], h.Value)
	}
	// The router writes the request span's context into the upstream request (replacing what
	// the downstream sent), unless no_context_propagation.
	if t := s.cfg.tracing; t != nil && !t.noContextPropagation {
		s.span.injectTraceContext(func(k, v string) { req.Header[http.CanonicalHeaderKey(k)] = []string{v} })
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = nil // Go must not add its own.
	}
	start := time.Now()
	resp, err := up.Transport().RoundTrip(req)
	if err != nil {
		var ce *cluster.ConnectError
		switch {
		case errors.Is(err, cluster.ErrNoHealthyUpstream):
			s.sendLocalReply(http.StatusServiceUnavailable, bodyNoHealthy, nil)
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
			s.env.Stats.Inc("cluster." + route.Cluster + ".upstream_rq_timeout")
			s.sendLocalReply(http.StatusGatewayTimeout, bodyTimeout, nil)
		case errors.As(err, &ce):
			s.env.Stats.Inc("cluster." + route.Cluster + ".upstream_cx_connect_fail")
			s.sendLocalReply(http.StatusServiceUnavailable, bodyConnectFailure, nil)
		default:
			s.log.Debug("upstream request failed", "cluster", route.Cluster, "error", err)
			s.sendLocalReply(http.StatusServiceUnavailable, bodyResetFailure, nil)
		}
		return false
	}
	defer resp.Body.Close()
	s.env.Stats.Inc("cluster." + route.Cluster + ".upstream_rq_" + strconv.Itoa(resp.StatusCode))
	s.answered = true
	h := s.w.Header()
	for k, vs := range resp.Header {
		if hopByHop[strings.ToLower(k)] {
			continue
		}
		h[k] = vs
	}
	if !rt.suppressEnvoyHeaders {
		h.Set("X-Envoy-Upstream-Service-Time", strconv.FormatInt(time.Since(start).Milliseconds(), 10))
	}
	for _, ops := range []headerOps{route.table.headerOps, route.vhost.headerOps, route.headerOps} {
		for _, k := range ops.respRem {
			h.Del(k)
		}
		for _, a := range ops.respAdd {
			var hl Headers
			for _, v := range h.Values(a.key) {
				hl.Add(a.key, v)
			}
			applyAdd(&hl, a.key, a.value.render(s), a.action)
			h.Del(a.key)
			for _, e := range hl {
				h.Add(e.Key, e.Value)
			}
		}
	}
	// Response-phase hooks may still answer locally instead (their local reply replaces the
	// upstream response), so the stream counts as answered only once they passed.
	s.answered = false
	for _, hook := range s.encodeHooks {
		if !hook(resp.StatusCode, h) {
			return false
		}
	}
	s.answered = true
	s.setServer(h)
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	s.status = resp.StatusCode
	s.w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(flushWriter{s.w}, resp.Body); err != nil {
		s.log.Debug("upstream response body interrupted", "cluster", route.Cluster, "error", err)
		panic(http.ErrAbortHandler)
	}
	return false
}

// flushWriter flushes after every write so streamed upstream bodies reach the client promptly.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}
