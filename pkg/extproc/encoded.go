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
// message already in protobuf wire format (Wire), which is sent as is, without marshalling.
type Answer struct {
	Msg  *extprocv3.ProcessingResponse
	Wire *Encoded
}

// Encoded is a ProcessingResponse in protobuf wire format, in two parts sent one after the other:
// a head and a tail. Protobuf reads concatenated encodings as one message, so an answer can keep a
// tail shared by many answers (a constant list of fields) and make only its head. Neither part is
// modified once given to NewEncoded.
type Encoded struct{ head, tail []byte }

// NewEncoded returns the message whose encoding is head followed by tail.
func NewEncoded(head, tail []byte) *Encoded { return &Encoded{head: head, tail: tail} }

// Bytes returns the whole encoding in one new slice.
func (e *Encoded) Bytes() []byte {
	b := make([]byte, 0, len(e.head)+len(e.tail))
	return append(append(b, e.head...), e.tail...)
}

// Decode returns the message (for tests and tools: the server never decodes).
func (e *Encoded) Decode() (*extprocv3.ProcessingResponse, error) {
	m := &extprocv3.ProcessingResponse{}
	if err := protobuf.Unmarshal(e.Bytes(), m); err != nil {
		return nil, fmt.Errorf("decode ext_proc response: %w", err)
	}
	return m, nil
}

// WithModeOverride returns e with mode_override set to mode, appended to a copy of the tail rather
// than re-encoding the message.
func (e *Encoded) WithModeOverride(mode *extprocfv3.ProcessingMode) (*Encoded, error) {
	extra, err := protobuf.MarshalOptions{Deterministic: true}.Marshal(&extprocv3.ProcessingResponse{ModeOverride: mode})
	if err != nil {
		return nil, fmt.Errorf("encode mode_override: %w", err)
	}
	tail := make([]byte, 0, len(e.tail)+len(extra))
	return &Encoded{head: e.head, tail: append(append(tail, e.tail...), extra...)}, nil
}

// wireCodec is the proto codec, except that an *Encoded is sent as the bytes it holds and, with
// a lean decoder, request_headers messages are decoded leanly (leanDecoder).
type wireCodec struct {
	proto encoding.CodecV2
	lean  *leanDecoder // nil: every message is decoded in full
}

func newWireCodec(lean *leanDecoder) wireCodec {
	return wireCodec{proto: encoding.GetCodecV2(proto.Name), lean: lean}
}

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*Encoded); ok {
		// SliceBuffers are never returned to a pool: shared bytes stay untouched.
		if len(e.tail) == 0 {
			return mem.BufferSlice{mem.SliceBuffer(e.head)}, nil
		}
		return mem.BufferSlice{mem.SliceBuffer(e.head), mem.SliceBuffer(e.tail)}, nil
	}
	return c.proto.Marshal(v)
}

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*extprocv3.ProcessingRequest); ok && c.lean != nil {
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		done := c.lean.decode(buf.ReadOnlyData(), m)
		buf.Free()
		if done {
			return nil
		}
	}
	return c.proto.Unmarshal(data, v)
}

func (c wireCodec) Name() string { return proto.Name }
