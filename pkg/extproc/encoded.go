package extproc

import (
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	"github.com/metaproxy/metaproxy/pkg/protoframe"
)

// wireCodec is the proto codec, except that a *protoframe.Encoded is sent as the bytes it holds and, with
// a lean decoder, request_headers messages are decoded leanly (leanDecoder).
type wireCodec struct {
	proto encoding.CodecV2
	lean  *leanDecoder // nil: every message is decoded in full
}

func newWireCodec(lean *leanDecoder) wireCodec {
	return wireCodec{proto: encoding.GetCodecV2(proto.Name), lean: lean}
}

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*protoframe.Encoded); ok {
		// SliceBuffers are never returned to a pool: shared bytes stay untouched.
		head, tail := e.Parts()
		if len(tail) == 0 {
			return mem.BufferSlice{mem.SliceBuffer(head)}, nil
		}
		return mem.BufferSlice{mem.SliceBuffer(head), mem.SliceBuffer(tail)}, nil
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
