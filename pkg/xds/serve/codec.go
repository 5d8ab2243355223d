package serve

import (
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// codec is gRPC's proto codec but for the buffer a message is marshaled into: one of the message's
// size, which the garbage collector reclaims once the transport has written it.
//
// gRPC's codec takes that buffer from its default pool, whose tiers are 256 B, 4 KiB, 16 KiB,
// 32 KiB and 1 MiB (google.golang.org/grpc/mem/buffer_pool.go, defaultBufferPoolSizeExponents):
// every response between 32 KiB and 1 MiB, such as the listeners of a node with 40 to 1000
// networks in state of the world, holds a 1 MiB buffer for as long as its Envoy takes to read it,
// and the pool keeps the buffers after. With a thousand Envoys connecting at once that was 150 to
// 250 MiB more RSS (docs/benchmarks.md). Decoding is gRPC's own.
type codec struct {
	encoding.CodecV2
}

var _ encoding.CodecV2 = codec{}

// newCodec returns the codec of the xDS server.
func newCodec() codec {
	// encoding/proto registers itself when imported (as here).
	return codec{CodecV2: encoding.GetCodecV2(grpcproto.Name)}
}

// Marshal implements encoding.CodecV2.
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return c.CodecV2.Marshal(v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}
