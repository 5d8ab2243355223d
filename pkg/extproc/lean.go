package extproc

import (
	"slices"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/protoframe"
)

// leanDecoder decodes the one message cmd/extproc gets for nearly every stream, request_headers,
// keeping only what the decision reads: the source.address request attribute and the request
// headers named in keep (trace context). The VM's other headers, the metadata context and the
// protocol configuration are skipped without being copied: a full decode of them was a third of
// the garbage made per stream. Anything else (another phase, a source.address that is not a plain
// string) makes decode return false, and the caller decodes the message in full.
type leanDecoder struct {
	keep map[string]bool
}

var lean = struct {
	requestHeaders, attributes                          protowire.Number
	otherPhases                                         [5]protowire.Number
	httpHeaders, endOfStream                            protowire.Number
	headerMapHeaders, key, value, rawValue              protowire.Number
	entryKey, entryValue, structFields, valueStringKind protowire.Number
}{
	requestHeaders: protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "request_headers"),
	attributes:     protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "attributes"),
	otherPhases: [5]protowire.Number{
		protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "response_headers"),
		protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "request_body"),
		protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "response_body"),
		protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "request_trailers"),
		protoframe.FieldNumber(&extprocv3.ProcessingRequest{}, "response_trailers"),
	},
	httpHeaders:      protoframe.FieldNumber(&extprocv3.HttpHeaders{}, "headers"),
	endOfStream:      protoframe.FieldNumber(&extprocv3.HttpHeaders{}, "end_of_stream"),
	headerMapHeaders: protoframe.FieldNumber(&corev3.HeaderMap{}, "headers"),
	key:              protoframe.FieldNumber(&corev3.HeaderValue{}, "key"),
	value:            protoframe.FieldNumber(&corev3.HeaderValue{}, "value"),
	rawValue:         protoframe.FieldNumber(&corev3.HeaderValue{}, "raw_value"),
	// Map entries are messages {key = 1; value = 2} by the protobuf specification.
	entryKey:        1,
	entryValue:      2,
	structFields:    protoframe.FieldNumber(&structpb.Struct{}, "fields"),
	valueStringKind: protoframe.FieldNumber(&structpb.Value{}, "string_value"),
}

// decode fills m from b and returns true, or returns false (m untouched) when b is not a plain
// request_headers message or is malformed; the caller then decodes b in full.
func (d leanDecoder) decode(b []byte, m *extprocv3.ProcessingRequest) bool {
	var (
		headers    *extprocv3.HttpHeaders
		attrsFound bool
		source     *string // source.address of the last attributes entry for ext_proc
		sourceOK   = true  // false: the value is not a plain string (decoded in full)
	)
	ok := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		switch {
		case num == lean.requestHeaders && typ == protowire.BytesType:
			if headers == nil {
				headers = &extprocv3.HttpHeaders{}
			}
			return d.httpHeaders(v, headers) // a repeated message field merges: keep adding
		case num == lean.attributes && typ == protowire.BytesType:
			key, value, ok := mapEntry(v)
			if !ok || key != contract.ExtProcAttributesKey {
				return ok
			}
			// A later entry with the same key replaces the earlier one.
			attrsFound, source, sourceOK = true, nil, true
			return structSource(value, &source, &sourceOK)
		}
		return !slices.Contains(lean.otherPhases[:], num)
	})
	if !ok || headers == nil || !sourceOK {
		return false
	}
	m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: headers}
	if attrsFound {
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		if source != nil {
			s.Fields[contract.SourceAddressAttribute] = structpb.NewStringValue(*source)
		}
		m.Attributes = map[string]*structpb.Struct{contract.ExtProcAttributesKey: s}
	}
	return true
}

// fields calls fn with each field of the message b: its number, its wire type and, when length
// delimited, its content (else its encoded value). Fields of unexpected numbers or types are for
// fn to skip, as protobuf keeps them as unknown fields. It returns false on malformed input or as
// soon as fn does.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else if n = protowire.ConsumeFieldValue(num, typ, b); n >= 0 {
			v = b[:n]
		}
		if n < 0 {
			return false
		}
		b = b[n:]
		if !fn(num, typ, v) {
			return false
		}
	}
	return true
}

// httpHeaders adds the kept headers of b (an HttpHeaders) to h.
func (d leanDecoder) httpHeaders(b []byte, h *extprocv3.HttpHeaders) bool {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		switch {
		case num == lean.httpHeaders && typ == protowire.BytesType:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte) bool {
				if num != lean.headerMapHeaders || typ != protowire.BytesType {
					return true
				}
				return d.header(v, h)
			})
		case num == lean.endOfStream && typ == protowire.VarintType:
			x, _ := protowire.ConsumeVarint(v)
			h.EndOfStream = protowire.DecodeBool(x)
		}
		return true
	})
}

// header appends b (a HeaderValue) to h when its key is kept. Every header is checked as a full
// decode would (keys and values are proto3 strings: valid UTF-8), kept or not.
func (d leanDecoder) header(b []byte, h *extprocv3.HttpHeaders) bool {
	var key, value, raw []byte
	hasRaw := false
	ok := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		if typ != protowire.BytesType {
			return true
		}
		switch num {
		case lean.key:
			key = v
		case lean.value:
			value = v
		case lean.rawValue:
			raw, hasRaw = v, true
		}
		return true
	})
	if !ok || !utf8.Valid(key) || !utf8.Valid(value) {
		return false
	}
	if d.keep[string(key)] {
		hv := &corev3.HeaderValue{Key: string(key), Value: string(value)}
		if hasRaw {
			hv.RawValue = append([]byte{}, raw...)
		}
		if h.Headers == nil {
			h.Headers = &corev3.HeaderMap{}
		}
		h.Headers.Headers = append(h.Headers.Headers, hv)
	}
	return true
}

// mapEntry splits a map entry into its key (a valid UTF-8 string) and value bytes.
func mapEntry(b []byte) (key string, value []byte, ok bool) {
	var k []byte
	ok = fields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		switch {
		case typ != protowire.BytesType:
		case num == lean.entryKey:
			k = v
		case num == lean.entryValue:
			value = v
		}
		return true
	})
	if !ok || !utf8.Valid(k) {
		return "", nil, false
	}
	return string(k), value, true
}

// structSource finds source.address in b (a Struct). *source is set to a plain string value;
// *plain is false when the value has any other kind (or several kinds, merged).
func structSource(b []byte, source **string, plain *bool) bool {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		if num != lean.structFields || typ != protowire.BytesType {
			return true
		}
		key, value, ok := mapEntry(v)
		if !ok || key != contract.SourceAddressAttribute {
			return ok
		}
		// A later entry replaces the earlier one.
		*source, *plain = nil, true
		if s, ok := plainString(value); ok {
			*source = &s
		} else {
			*plain = false
		}
		return true
	})
}

// plainString returns the string of b (a Value) when string_value is its only field.
func plainString(b []byte) (string, bool) {
	var s []byte
	found := false
	ok := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		s, found = v, true
		return num == lean.valueStringKind && typ == protowire.BytesType
	})
	if !ok || !found || !utf8.Valid(s) {
		return "", false
	}
	return string(s), true
}
