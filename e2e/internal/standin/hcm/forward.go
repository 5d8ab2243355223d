package hcm

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// forwardRules is the ext_proc filter's forward_rules (HeaderForwardingRules): which headers go to
// the ext_proc server, as Envoy decides it in MutationUtils::headerCanBeForwarded
// (source/extensions/filters/http/ext_proc/mutation_utils.cc). Filter::buildHeaderRequest
// (ext_proc.cc) applies it to every header map it sends, request and response headers alike, and
// pseudo-headers (:path, :method, :authority, :scheme, :status) are headers like any other there:
// an allow-list that does not name them leaves them out.
type forwardRules struct {
	allowed, disallowed []stringMatcher // empty: no list
}

// allows reports whether header key (lower case, as Envoy's header maps hold them) is forwarded:
// not matched by disallowed_headers, and matched by allowed_headers when that list is set.
func (r forwardRules) allows(key string) bool {
	if anyMatch(r.disallowed, key) {
		return false
	}
	return len(r.allowed) == 0 || anyMatch(r.allowed, key)
}

func anyMatch(ms []stringMatcher, s string) bool {
	for _, m := range ms {
		if m.match(s) {
			return true
		}
	}
	return false
}

// parseForwardRules builds the rules and rejects what Envoy rejects at config time: the
// protoc-gen-validate rules of HeaderForwardingRules (a ListStringMatcher needs at least one
// pattern; prefix, suffix and contains at least one character) and what StringMatcherImpl's
// constructor refuses (source/common/common/matchers.h: ignore_case with safe_regex, a regex that
// does not compile). custom matchers (extensions) are not implemented by the stand-in.
func parseForwardRules(fr *extprocfv3.HeaderForwardingRules) (forwardRules, error) {
	if fr == nil {
		return forwardRules{}, nil
	}
	if err := fr.ValidateAll(); err != nil {
		return forwardRules{}, fmt.Errorf("forward_rules: %w", err)
	}
	allowed, err1 := parseListMatcher("forward_rules.allowed_headers", fr.GetAllowedHeaders())
	disallowed, err2 := parseListMatcher("forward_rules.disallowed_headers", fr.GetDisallowedHeaders())
	return forwardRules{allowed: allowed, disallowed: disallowed}, errors.Join(err1, err2)
}

func parseListMatcher(field string, l *matcherv3.ListStringMatcher) ([]stringMatcher, error) {
	var out []stringMatcher
	var errs []error
	for i, p := range l.GetPatterns() {
		m, err := newStringMatcher(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", field, i, err))
			continue
		}
		out = append(out, m)
	}
	return out, errors.Join(errs...)
}

// stringMatcher is Envoy's StringMatcherImpl (source/common/common/matchers.h): exact, prefix,
// suffix and contains, ASCII case-insensitive with ignore_case; safe_regex matches the whole value.
type stringMatcher struct {
	kind       string // exact, prefix, suffix, contains, regex
	pattern    string // lower case when ignoreCase
	ignoreCase bool
	re         *regexp.Regexp
}

func newStringMatcher(m *matcherv3.StringMatcher) (stringMatcher, error) {
	sm := stringMatcher{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.kind, sm.pattern = "exact", p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.kind, sm.pattern = "prefix", p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.kind, sm.pattern = "suffix", p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.kind, sm.pattern = "contains", p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if sm.ignoreCase {
			return sm, errors.New("ignore_case has no effect for safe_regex")
		}
		// RE2 (Envoy's regex engine) and Go's regexp share the syntax; Envoy matches the whole value.
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return sm, fmt.Errorf("safe_regex %q: %w", p.SafeRegex.GetRegex(), err)
		}
		sm.kind, sm.re = "regex", re
	default:
		return sm, fmt.Errorf("string matcher %T is not supported by the stand-in", p)
	}
	if sm.ignoreCase {
		sm.pattern = strings.ToLower(sm.pattern)
	}
	return sm, nil
}

func (m stringMatcher) match(s string) bool {
	if m.kind == "regex" {
		return m.re.MatchString(s)
	}
	if m.ignoreCase {
		s = strings.ToLower(s)
	}
	switch m.kind {
	case "exact":
		return s == m.pattern
	case "prefix":
		return strings.HasPrefix(s, m.pattern)
	case "suffix":
		return strings.HasSuffix(s, m.pattern)
	default:
		return strings.Contains(s, m.pattern)
	}
}
