package hcm

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Stream is one downstream request travelling through the filter chain.
type Stream struct {
	cfg *Config
	env *Env
	log *slog.Logger

	// Method, Path (with query), Authority and Scheme are the request pseudo-headers.
	Method, Path, Authority, Scheme string
	// Proto is the downstream protocol ("HTTP/1.1").
	Proto string
	// Headers are the regular request headers, lower-cased, in order.
	Headers Headers
	// Remote is the downstream address as Envoy's HCM decides it (XFF rules applied);
	// DirectRemote is the peer of the TCP connection; Local is the listener address.
	Remote, DirectRemote, Local netip.AddrPort

	body          io.ReadCloser
	contentLength int64
	endOfStream   bool

	w        http.ResponseWriter
	answered bool
	// encodeHooks run on the upstream response headers before they go downstream (ext_proc's
	// response phase); one returning false answered the request itself. cleanups run at the end.
	encodeHooks   []func(code int, h http.Header) bool
	cleanups      []func()
	route         *Route
	routeResolved bool
	// status is the response status sent downstream (0 until then); span is the request's tracing
	// span (nil without one).
	status int
	span   *span
}

// header returns a request header, including pseudo-headers.
func (s *Stream) header(k string) (string, bool) {
	switch k {
	case ":method":
		return s.Method, true
	case ":path":
		return s.Path, true
	case ":authority", "host":
		return s.Authority, true
	case ":scheme":
		return s.Scheme, true
	}
	return s.Headers.Get(k)
}

// Route returns the route of the request, resolving it once (until the route cache is cleared).
func (s *Stream) Route() *Route {
	if !s.routeResolved {
		s.routeResolved = true
		s.route = s.cfg.table(s.env).Match(s.Authority, s.Path, s.cfg.stripPort)
	}
	return s.route
}

func (s *Stream) clearRouteCache() { s.routeResolved = false }

// sendLocalReply answers the request from the stand-in itself (Envoy's sendLocalReply).
func (s *Stream) sendLocalReply(code int, body string, extra Headers) {
	if s.answered {
		return
	}
	s.answered = true
	h := s.w.Header()
	for _, e := range extra {
		h.Add(e.Key, e.Value)
	}
	if body != "" && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "text/plain")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	s.setServer(h)
	s.status = code
	s.w.WriteHeader(code)
	_, _ = io.WriteString(s.w, body)
}

func (s *Stream) setServer(h http.Header) {
	if s.cfg.serverPassThrough && h.Get("Server") != "" {
		return
	}
	h.Set("Server", s.cfg.serverName)
}

// newStream builds the Envoy view of an HTTP/1.1 request: lower-cased header list with the Host
// header turned into :authority.
func newStream(cfg *Config, env *Env, w http.ResponseWriter, r *http.Request) *Stream {
	s := &Stream{
		cfg: cfg, env: env, w: w,
		Method: r.Method, Path: r.RequestURI, Authority: r.Host, Scheme: "http", Proto: r.Proto,
		body: r.Body, contentLength: r.ContentLength,
	}
	if r.TLS != nil {
		s.Scheme = "https"
	}
	if s.Path == "" {
		s.Path = r.URL.RequestURI()
	}
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lk := strings.ToLower(k)
		if lk == "host" {
			continue
		}
		for _, v := range r.Header[k] {
			s.Headers = append(s.Headers, Header{lk, v})
		}
	}
	if len(r.TransferEncoding) > 0 {
		s.Headers = append(s.Headers, Header{"transfer-encoding", strings.Join(r.TransferEncoding, ", ")})
	}
	s.endOfStream = r.ContentLength == 0 && len(r.TransferEncoding) == 0
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		s.DirectRemote = unmapZone(ap)
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(interface{ String() string }); ok {
		if ap, err := netip.ParseAddrPort(la.String()); err == nil {
			s.Local = unmapZone(ap)
		}
	}
	s.Remote = s.DirectRemote
	return s
}

// unmapZone drops the IPv6 zone: Envoy prints link-local peers without a scope.
func unmapZone(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().WithZone(""), ap.Port())
}

// mutateRequestHeaders does what Envoy's ConnectionManagerUtility::mutateRequestHeaders
// (source/common/http/conn_manager_utility.cc) does for the options the stand-in implements: the
// early header mutations first, then the trusted remote address, x-forwarded-for,
// x-forwarded-proto, the internal headers of an external request and x-request-id.
func (s *Stream) mutateRequestHeaders() {
	for _, m := range s.cfg.early {
		m.mutate(s)
	}
	for _, h := range []string{"connection", "keep-alive", "proxy-connection", "upgrade", "x-envoy-internal"} {
		s.Headers.Del(h)
	}
	xff := s.Headers.Values("x-forwarded-for")
	if s.cfg.useRemoteAddress {
		s.Remote = s.DirectRemote
		if s.cfg.xffTrustedHops > 0 {
			if a, ok := xffHop(xff, int(s.cfg.xffTrustedHops)); ok {
				s.Remote = netip.AddrPortFrom(a, 0)
			}
		}
		if !s.cfg.skipXffAppend {
			appendXFF(&s.Headers, s.Remote.Addr().String())
		}
		s.Headers.Set("x-forwarded-proto", s.Scheme)
	} else {
		// Envoy trusts the last x-forwarded-for hop when use_remote_address is false.
		if a, ok := xffHop(xff, int(s.cfg.xffTrustedHops)); ok {
			s.Remote = netip.AddrPortFrom(a, 0)
		}
		if !s.Headers.Has("x-forwarded-proto") {
			s.Headers.Set("x-forwarded-proto", s.Scheme)
		}
	}
	s.cleanInternalHeaders()
	if s.cfg.useRemoteAddress {
		// An edge request: Envoy names the client for the hosts behind it.
		s.Headers.Set("x-envoy-external-address", s.Remote.Addr().String())
	}
	if s.cfg.generateRequestID {
		if !s.Headers.Has("x-request-id") || (s.cfg.useRemoteAddress && !s.cfg.preserveExternalRequestID) {
			s.Headers.Set("x-request-id", newUUID())
		}
	}
}

// cleanInternalHeaders is ConnectionManagerUtility::cleanInternalHeaders for an external request
// (every request the stand-in serves is one, see Parse): the Envoy control headers a client must
// not set, and for an edge request (use_remote_address) those naming the downstream too.
func (s *Stream) cleanInternalHeaders() {
	if s.cfg.useRemoteAddress {
		for _, h := range []string{"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
			"x-envoy-downstream-service-node", "x-envoy-original-path"} {
			s.Headers.Del(h)
		}
	}
	for _, h := range []string{"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
		"x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-ms",
		"x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
		"x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout"} {
		s.Headers.Del(h)
	}
}

// xffHop returns the address hops-from-the-right in a comma-joined x-forwarded-for list.
func xffHop(values []string, hops int) (netip.Addr, bool) {
	var all []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			all = append(all, strings.TrimSpace(p))
		}
	}
	i := len(all) - 1 - hops
	if i < 0 || i >= len(all) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(all[i])
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func appendXFF(h *Headers, addr string) {
	if v, ok := h.Get("x-forwarded-for"); ok && v != "" {
		vals := h.Values("x-forwarded-for")
		h.Set("x-forwarded-for", strings.Join(vals, ",")+","+addr)
		return
	}
	h.Set("x-forwarded-for", addr)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
