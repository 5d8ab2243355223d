package serve

import (
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
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
//
// A state-of-the-world response is written without copying its resources: go-control-plane has
// already marshaled each into its Any (DiscoveryResponse.resources), and the encoding gRPC sends
// refers to those bytes instead of holding a second copy of every listener until the Envoy has
// read it (see resourcesReferenced). Delta responses are proto's: the same for them (each resource
// is a Resource around its Any) saved a third of the bytes allocated per 100-listener response
// (BenchmarkListenerForm/served/delta-response) but no RSS in loadgen xds --mode delta, where a
// change is one resource per Envoy.
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
	if r, ok := m.(*discoveryv3.DiscoveryResponse); ok {
		if bs, ok, err := resourcesReferenced(r); ok || err != nil {
			return bs, err
		}
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// Field numbers: DiscoveryResponse.resources (repeated google.protobuf.Any), and Any's own.
const (
	resourcesField protowire.Number = 2
	anyTypeURL     protowire.Number = 1
	anyValue       protowire.Number = 2
)

// resourcesReferenced encodes r as its fields but resources, marshaled by proto, followed by each
// resource as a field 2 entry whose Any value is r's own bytes, not a copy: a message's fields may
// come in any order and a repeated field's entries need not be adjacent (protobuf encoding, "Field
// Order"), so this is r's encoding for any parser, Envoy's included. ok is false, and r is left to
// proto.Marshal, when r has no resources or one that this would not encode exactly (nil, or with
// unknown fields).
func resourcesReferenced(r *discoveryv3.DiscoveryResponse) (mem.BufferSlice, bool, error) {
	res := r.GetResources()
	if len(res) == 0 {
		return nil, false, nil
	}
	src := r.ProtoReflect()
	rest := src.Type().New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Number() != resourcesField {
			rest.Set(fd, v)
		}
		return true
	})
	rest.SetUnknown(src.GetUnknown())
	// What is written besides the values: the rest, and per resource its tag, length and type URL.
	size := proto.Size(rest.Interface())
	for _, a := range res {
		if a == nil || len(a.ProtoReflect().GetUnknown()) != 0 {
			return nil, false, nil
		}
		n := proto.Size(a)
		size += protowire.SizeTag(resourcesField) + protowire.SizeVarint(uint64(n)) + n - len(a.GetValue())
	}
	head, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 0, size), rest.Interface())
	if err != nil {
		return nil, true, err
	}
	// The pieces are pointers into one array: a SliceBuffer converted to mem.Buffer would be
	// allocated on its own, two per resource.
	pieces := make([]mem.SliceBuffer, 0, 1+2*len(res))
	start := 0
	for _, a := range res {
		value := a.GetValue()
		head = protowire.AppendTag(head, resourcesField, protowire.BytesType)
		head = protowire.AppendVarint(head, uint64(proto.Size(a)))
		if u := a.GetTypeUrl(); u != "" {
			head = protowire.AppendTag(head, anyTypeURL, protowire.BytesType)
			head = protowire.AppendString(head, u)
		}
		if len(value) == 0 {
			continue
		}
		head = protowire.AppendTag(head, anyValue, protowire.BytesType)
		head = protowire.AppendVarint(head, uint64(len(value)))
		pieces = append(pieces, head[start:len(head):len(head)], value)
		start = len(head)
	}
	if start < len(head) {
		pieces = append(pieces, head[start:len(head):len(head)])
	}
	out := make(mem.BufferSlice, len(pieces))
	for i := range pieces {
		out[i] = &pieces[i]
	}
	return out, true, nil
}
