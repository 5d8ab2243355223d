// Package protoframe holds ext_proc responses framed by hand in protobuf wire format, so that the
// decision (pkg/decide) can make its answer without the gRPC layer (pkg/extproc), and the gRPC
// layer can send it without knowing how it was made.
package protoframe

import (
	"fmt"

	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Answer is what is sent back for a request_headers message: Msg, or the same kind of message
// already in protobuf wire format (Wire), which is sent as is, without marshalling.
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

// Parts returns the head and the tail, to be sent one after the other and never modified.
func (e *Encoded) Parts() (head, tail []byte) { return e.head, e.tail }

// Bytes returns the whole encoding in one new slice.
func (e *Encoded) Bytes() []byte {
	b := make([]byte, 0, len(e.head)+len(e.tail))
	return append(append(b, e.head...), e.tail...)
}

// Decode returns the message (for tests and tools: the server never decodes).
func (e *Encoded) Decode() (*extprocv3.ProcessingResponse, error) {
	m := &extprocv3.ProcessingResponse{}
	if err := proto.Unmarshal(e.Bytes(), m); err != nil {
		return nil, fmt.Errorf("decode ext_proc response: %w", err)
	}
	return m, nil
}

// WithModeOverride returns e with mode_override set to mode, appended to a copy of the tail rather
// than re-encoding the message.
func (e *Encoded) WithModeOverride(mode *extprocfv3.ProcessingMode) (*Encoded, error) {
	extra, err := proto.MarshalOptions{Deterministic: true}.Marshal(&extprocv3.ProcessingResponse{ModeOverride: mode})
	if err != nil {
		return nil, fmt.Errorf("encode mode_override: %w", err)
	}
	tail := make([]byte, 0, len(e.tail)+len(extra))
	return &Encoded{head: e.head, tail: append(append(tail, e.tail...), extra...)}, nil
}

// FieldNumber returns the number of m's field called name, read from the generated descriptor so
// that hand-written encoders and decoders cannot drift from the .proto files. It panics on a name
// m does not have: a programming error, caught by any test that touches the caller.
func FieldNumber(m proto.Message, name string) protowire.Number {
	fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		panic(fmt.Sprintf("%s has no field %s", m.ProtoReflect().Descriptor().FullName(), name))
	}
	return fd.Number()
}
