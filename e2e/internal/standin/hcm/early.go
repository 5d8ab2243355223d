package hcm

import (
	"errors"
	"fmt"
	"strings"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
)

// earlyHeaderMutationType is the typed_config of envoy.http.early_header_mutation.header_mutation,
// the one early header mutation extension the stand-in implements.
const earlyHeaderMutationType = "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"

// earlyMutation is one entry of early_header_mutation_extensions: Envoy's header_mutation extension
// (source/extensions/http/early_header_mutation/header_mutation/header_mutation.cc), which
// evaluates its mutations in order on the request headers (Http::HeaderMutations,
// source/common/http/header_mutation.cc) and always lets the next extension run.
type earlyMutation []headerMutation

// headerMutation is one config.common.mutation_rules.v3.HeaderMutation: exactly one of remove
// (a lower-case name), removeOnMatch or add is set.
type headerMutation struct {
	remove        string
	removeOnMatch *stringMatcher
	add           *earlyAdd
}

// earlyAdd is an append mutation: Envoy's HeadersToAddEntry (source/common/router/header_parser.cc).
type earlyAdd struct {
	key       string
	value     *format
	action    corev3.HeaderValueOption_HeaderAppendAction
	keepEmpty bool
}

// parseEarlyMutations parses early_header_mutation_extensions. Envoy picks an extension by the type
// of its typed_config; the stand-in implements header_mutation only and refuses the others.
func parseEarlyMutations(exts []*corev3.TypedExtensionConfig) ([]earlyMutation, error) {
	var out []earlyMutation
	for i, e := range exts {
		if tu := e.GetTypedConfig().GetTypeUrl(); tu != earlyHeaderMutationType {
			return nil, fmt.Errorf("early_header_mutation_extensions[%d] %s (%s) is not implemented by the stand-in (%s only)", i, e.GetName(), tu, earlyHeaderMutationType)
		}
		var hm earlymutationv3.HeaderMutation
		if err := e.GetTypedConfig().UnmarshalTo(&hm); err != nil {
			return nil, fmt.Errorf("early_header_mutation_extensions[%d]: %w", i, err)
		}
		m, err := parseEarlyMutation(&hm)
		if err != nil {
			return nil, fmt.Errorf("early_header_mutation_extensions[%d] %s: %w", i, e.GetName(), err)
		}
		out = append(out, m)
	}
	return out, nil
}

// parseEarlyMutation rejects what Envoy rejects when it creates the extension: the proto's
// validation rules (downcastAndValidate: at least one mutation, one action each, valid names),
// an append with both append and append_action, an append to a :-prefixed header or host
// (":-prefixed or host headers may not be modified", parseHttpHeaderFormatter), a value the
// substitution formatter cannot parse. What Envoy accepts and the stand-in cannot model is refused
// too: removing pseudo-headers (the stand-in keeps them apart from the header list), substitution
// commands it does not know.
func parseEarlyMutation(hm *earlymutationv3.HeaderMutation) (earlyMutation, error) {
	if err := hm.ValidateAll(); err != nil {
		return nil, err
	}
	var out earlyMutation
	var errs []error
	for i, mu := range hm.GetMutations() {
		m, err := parseHeaderMutation(mu)
		if err != nil {
			errs = append(errs, fmt.Errorf("mutations[%d]: %w", i, err))
			continue
		}
		out = append(out, m)
	}
	return out, errors.Join(errs...)
}

func parseHeaderMutation(mu *mutationv3.HeaderMutation) (headerMutation, error) {
	switch a := mu.GetAction().(type) {
	case *mutationv3.HeaderMutation_Remove:
		k := strings.ToLower(a.Remove)
		if strings.HasPrefix(k, ":") {
			return headerMutation{}, fmt.Errorf("remove %s: removing pseudo-headers is not implemented by the stand-in", k)
		}
		return headerMutation{remove: k}, nil
	case *mutationv3.HeaderMutation_RemoveOnMatch_:
		sm, err := newStringMatcher(a.RemoveOnMatch.GetKeyMatcher())
		if err != nil {
			return headerMutation{}, fmt.Errorf("remove_on_match: %w", err)
		}
		for _, p := range []string{":authority", ":path", ":method", ":scheme"} {
			if sm.match(p) {
				return headerMutation{}, fmt.Errorf("remove_on_match matches %s: removing pseudo-headers is not implemented by the stand-in", p)
			}
		}
		return headerMutation{removeOnMatch: &sm}, nil
	case *mutationv3.HeaderMutation_Append:
		o := a.Append
		k := strings.ToLower(o.GetHeader().GetKey())
		if strings.HasPrefix(k, ":") || k == "host" {
			return headerMutation{}, fmt.Errorf("append %s: :-prefixed or host headers may not be modified", k)
		}
		action := o.GetAppendAction()
		//lint:ignore SA1019 Envoy still honours the deprecated append field.
		if ap := o.GetAppend(); ap != nil {
			if action != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return headerMutation{}, errors.New("both append and append_action are set and it's not allowed")
			}
			if !ap.GetValue() {
				action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			}
		}
		// Envoy formats header.value only: a raw_value is not read (it adds nothing, or an empty
		// value with keep_empty_value).
		f, err := parseFormat(o.GetHeader().GetValue())
		if err != nil {
			return headerMutation{}, fmt.Errorf("append %s: %w", k, err)
		}
		return headerMutation{add: &earlyAdd{key: k, value: f, action: action, keepEmpty: o.GetKeepEmptyValue()}}, nil
	default:
		return headerMutation{}, fmt.Errorf("mutation %T is not implemented by the stand-in", a)
	}
}

// mutate applies the mutations in order, each seeing the headers the previous one left (Envoy's
// AppendMutation formats and applies one at a time, unlike a route's header parser).
func (m earlyMutation) mutate(s *Stream) {
	for _, mu := range m {
		switch {
		case mu.remove != "":
			s.Headers.Del(mu.remove)
		case mu.removeOnMatch != nil:
			kept := s.Headers[:0]
			for _, h := range s.Headers {
				if !mu.removeOnMatch.match(h.Key) {
					kept = append(kept, h)
				}
			}
			s.Headers = kept
		case mu.add != nil:
			if v := mu.add.value.render(s); v != "" || mu.add.keepEmpty {
				applyAdd(&s.Headers, mu.add.key, v, mu.add.action)
			}
		}
	}
}
