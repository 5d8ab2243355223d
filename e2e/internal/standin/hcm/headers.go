// Package hcm is the stand-in's HTTP connection manager: it parses Envoy's HttpConnectionManager
// (route table, http_filters, early header mutations, tracing) and serves HTTP/1.1 requests through
// the filter chain the way Envoy does for the subset it implements: the header_mutation early
// header mutation extension, envoy.filters.http.ext_proc, envoy.filters.http.local_ratelimit,
// envoy.filters.http.router and the OpenTelemetry tracer.
package hcm

import (
	"slices"
	"strings"
)

// Header is one request header as Envoy holds it: lower-cased key, raw value.
type Header struct {
	Key   string
	Value string
}

// Headers is an ordered header list; keys are lower-case.
type Headers []Header

// Get returns the first value of key.
func (h Headers) Get(key string) (string, bool) {
	for _, e := range h {
		if e.Key == key {
			return e.Value, true
		}
	}
	return "", false
}

// Values returns every value of key in order.
func (h Headers) Values(key string) []string {
	var out []string
	for _, e := range h {
		if e.Key == key {
			out = append(out, e.Value)
		}
	}
	return out
}

// Has reports whether key is present.
func (h Headers) Has(key string) bool {
	_, ok := h.Get(key)
	return ok
}

// Set replaces every value of key with one value (Envoy setCopy).
func (h *Headers) Set(key, value string) {
	key = strings.ToLower(key)
	for i, e := range *h {
		if e.Key == key {
			(*h)[i].Value = value
			h.compact(key, i)
			return
		}
	}
	*h = append(*h, Header{key, value})
}

// compact removes every entry of key after index keep.
func (h *Headers) compact(key string, keep int) {
	out := (*h)[:keep+1]
	for _, e := range (*h)[keep+1:] {
		if e.Key != key {
			out = append(out, e)
		}
	}
	*h = out
}

// Add appends a value (Envoy addCopy).
func (h *Headers) Add(key, value string) {
	*h = append(*h, Header{strings.ToLower(key), value})
}

// Del removes every value of key.
func (h *Headers) Del(key string) {
	key = strings.ToLower(key)
	*h = slices.DeleteFunc(*h, func(e Header) bool { return e.Key == key })
}

// hopByHop lists headers that belong to one connection and are never forwarded.
var hopByHop = map[string]bool{
	"connection":          true,
	"keep-alive":          true,
	"proxy-connection":    true,
	"transfer-encoding":   true,
	"upgrade":             true,
	"te":                  true,
	"trailer":             true,
	"proxy-authenticate":  false,
	"proxy-authorization": false,
}

// validHeaderName reports whether s is a valid (lower-case or pseudo) header name.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/;<=>?@[\\]{}", c) >= 0 {
			if !(c == ':' && i == 0) {
				return false
			}
		}
	}
	return true
}

// validHeaderValue reports whether s may be a header value (no NUL, CR or LF).
func validHeaderValue(s string) bool {
	return !strings.ContainsAny(s, "\x00\r\n")
}
