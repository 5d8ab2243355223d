package extproc

import (
	"fmt"

	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	protobuf "google.golang.org/protobuf/proto"
)

// Answer is what the server sends back for a request_headers message: Msg, or the same kind of
// message already in protobuf wire format (Wire), which is sent as is. Answers cached for many
// requests are kept encoded: a quarter of the memory of the message, and no marshalling per send.
type Answer struct {
	Msg  *extprocv3.ProcessingResponse
	Wire *Encoded
}

// Encoded is an immutable, encoded ProcessingResponse.
type Encoded struct{ b []byte }

// Encode encodes m once (deterministically) for sending many times.
func Encode(m *extprocv3.ProcessingResponse) (*Encoded, error) {
	b, err := protobuf.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode ext_proc response: %w", err)
	}
	return &Encoded{b: b}, nil
}

// Decode returns the message (for tests and tools: the server never decodes).
func (e *Encoded) Decode() (*extprocv3.ProcessingResponse, error) {
	m := &extprocv3.ProcessingResponse{}
	if err := protobuf.Unmarshal(e.b, m); err != nil {
		return nil, fmt.Errorf("decode ext_proc response: %w", err)
	}
	return m, nil
}

// Len is the encoded size in bytes.
func (e *Encoded) Len() int { return len(e.b) }

// WithModeOverride returns e with mode_override set to mode. Protobuf merges concatenated
// encodings, so the field is appended to a copy rather than re-encoding the message.
func (e *Encoded) WithModeOverride(mode *extprocfv3.ProcessingMode) (*Encoded, error) {
	extra, err := protobuf.MarshalOptions{Deterministic: true}.Marshal(&extprocv3.ProcessingResponse{ModeOverride: mode})
	if err != nil {
		return nil, fmt.Errorf("encode mode_override: %w", err)
	}
	b := make([]byte, 0, len(e.b)+len(extra))
	return &Encoded{b: append(append(b, e.b...), extra...)}, nil
}

// wireCodec is the proto codec, except that an *Encoded is sent as the bytes it holds.
type wireCodec struct{ proto encoding.CodecV2 }

func newWireCodec() wireCodec { return wireCodec{proto: encoding.GetCodecV2(proto.Name)} }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*Encoded); ok {
		// A SliceBuffer is never returned to a pool: the cached bytes stay untouched.
		return mem.BufferSlice{mem.SliceBuffer(e.b)}, nil
	}
	return c.proto.Marshal(v)
}

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c wireCodec) Name() string { return proto.Name }
