package serve

import (
	"bytes"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// TestCodecMarshalsExactly: the xDS server's codec writes a large response into a buffer of its
// size (gRPC's default pool would give a 1 MiB one) with the bytes proto gives.
func TestCodecMarshalsExactly(t *testing.T) {
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: strings.Repeat("v", 100<<10)}
	bs, err := newCodec().Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	want, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || !bytes.Equal(bs[0].ReadOnlyData(), want) || cap(bs[0].ReadOnlyData()) != len(want) {
		t.Errorf("%d buffers, %d bytes (capacity %d), want one of %d", len(bs), bs.Len(), cap(bs[0].ReadOnlyData()), len(want))
	}
	var back discoveryv3.DiscoveryResponse
	if err := newCodec().Unmarshal(bs, &back); err != nil || back.GetVersionInfo() != resp.GetVersionInfo() {
		t.Errorf("decode: %v", err)
	}
}
