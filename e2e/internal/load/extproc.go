package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

// Target is one VM as a listener sees it: the listener's scope (network or router id, sent as gRPC
// initial metadata the way cmd/xds configures it) and the VM address (the source.address attribute).
type Target struct {
	Router  bool   // router mode: the id goes in x-metaproxy-router-id
	ScopeID string // Neutron network (or router) id
	Addr    netip.Addr
}

// ExtProcOptions configures RunExtProc.
type ExtProcOptions struct {
	// Address is the ext_proc server: unix:///path.sock or HOST:PORT.
	Address string
	// Conns is the number of HTTP/2 connections the streams are spread over; Envoy opens one per
	// worker thread to the cluster. Zero: 1.
	Conns int
	// Concurrency is the number of streams in flight (closed loop: each worker opens the next stream
	// when the previous one is done).
	Concurrency int
	// Duration and Requests bound the run (whichever is reached first; at least one is required).
	Duration time.Duration
	Requests int
	// Targets are spread over the workers: worker i takes targets i, i+Concurrency, i+2*Concurrency...
	// (so Requests = len(Targets) asks each target once).
	Targets []Target
	// Path is the :path sent (default /openstack/latest/meta_data.json).
	Path string
	// Name labels the result.
	Name string
}

// RunExtProc sends ext_proc streams as Envoy's ext_proc filter does for one HTTP GET with
// request_headers SEND and everything else SKIP/NONE: one bidirectional stream per request, gRPC
// initial metadata with the listener's scope, one ProcessingRequest carrying request_headers
// (lower-case keys, values in raw_value, end_of_stream), the source.address attribute,
// protocol_config and an empty metadata_context; it waits for the HeadersResponse, half-closes and
// reads the stream's status. A HeadersResponse that sets headers counts as ok; an
// ImmediateResponse counts as "immediate <status>".
func RunExtProc(ctx context.Context, o ExtProcOptions) (Result, error) {
	if o.Concurrency <= 0 || len(o.Targets) == 0 {
		return Result{}, errors.New("extproc load: concurrency and at least one target are required")
	}
	if o.Conns <= 0 {
		o.Conns = 1
	}
	if o.Path == "" {
		o.Path = "/openstack/latest/meta_data.json"
	}
	target := o.Address
	if !strings.HasPrefix(target, "unix://") {
		target = "passthrough:///" + target
	}
	clients := make([]extprocv3.ExternalProcessorClient, o.Conns)
	for i := range clients {
		// Envoy's gRPC client names the cluster as :authority.
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(contract.ExtProcClusterName))
		if err != nil {
			return Result{}, fmt.Errorf("extproc load: dial %s: %w", o.Address, err)
		}
		defer cc.Close()
		cc.Connect()
		clients[i] = extprocv3.NewExternalProcessorClient(cc)
	}
	// Messages are built once per target (Envoy builds them per request; building is not what is
	// measured here, the server's answer is).
	reqs := make([]*extprocv3.ProcessingRequest, len(o.Targets))
	mds := make([]metadata.MD, len(o.Targets))
	for i, t := range o.Targets {
		key := contract.NetworkIDMetadata
		if t.Router {
			key = contract.RouterIDMetadata
		}
		mds[i] = metadata.Pairs(key, t.ScopeID)
		reqs[i] = envoyRequest(o.Path, t.Addr, 40000+i%20000)
	}
	// Warm the connections so that the first requests do not measure connection setup.
	for _, c := range clients {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := oneStream(metadata.NewOutgoingContext(wctx, mds[0]), c, reqs[0])
		cancel()
		if err != nil {
			return Result{}, fmt.Errorf("extproc load: first stream to %s: %w", o.Address, err)
		}
	}

	var rec recorder
	start := time.Now()
	b, err := newBounds(start, o.Duration, o.Requests)
	if err != nil {
		return Result{}, err
	}
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		s := rec.newSlot()
		c := clients[w%len(clients)]
		wg.Go(func() {
			i := w % len(reqs)
			for ctx.Err() == nil && b.next() {
				sctx := metadata.NewOutgoingContext(ctx, mds[i])
				t0 := time.Now()
				kind, err := oneStream(sctx, c, reqs[i])
				d := time.Since(t0)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					kind = "grpc: " + shortErr(err)
				}
				s.add(d, kind)
				i = (i + o.Concurrency) % len(reqs)
			}
		})
	}
	wg.Wait()
	name := o.Name
	if name == "" {
		name = "extproc " + o.Address
	}
	return rec.result(name, o.Concurrency, time.Since(start)), nil
}

// oneStream runs one ext_proc stream: send, receive, half-close, wait for the status.
func oneStream(ctx context.Context, c extprocv3.ExternalProcessorClient, req *extprocv3.ProcessingRequest) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.Process(ctx)
	if err != nil {
		return "", err
	}
	if err := st.Send(req); err != nil {
		return "", err
	}
	resp, err := st.Recv()
	if err != nil {
		return "", err
	}
	if err := st.CloseSend(); err != nil {
		return "", err
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			err = errors.New("unexpected second response")
		}
		return "", err
	}
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if len(r.RequestHeaders.GetResponse().GetHeaderMutation().GetSetHeaders()) == 0 {
			return "headers response without mutation", nil
		}
		return "", nil
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return fmt.Sprintf("immediate %d", r.ImmediateResponse.GetStatus().GetCode()), nil
	default:
		return fmt.Sprintf("unexpected response %T", r), nil
	}
}

// envoyRequest is the request_headers message Envoy sends for cloud-init's GET of path from addr.
func envoyRequest(path string, addr netip.Addr, port int) *extprocv3.ProcessingRequest {
	hdr := func(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				hdr(":authority", contract.MetadataIPv4),
				hdr(":path", path),
				hdr(":method", "GET"),
				hdr(":scheme", "http"),
				hdr("user-agent", "Cloud-Init/23.1.2"),
				hdr("accept", "*/*"),
				hdr("accept-encoding", "gzip, deflate"),
				hdr("x-forwarded-proto", "http"),
				hdr("x-request-id", "6f1c1d0e-4a3b-4a55-9a8e-0c8f3e2d1b7a"),
			}},
			EndOfStream: true,
		}},
		MetadataContext: &corev3.Metadata{},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(netip.AddrPortFrom(addr, uint16(port)).String()),
		}}},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{},
	}
}

// shortErr keeps error kinds few: the gRPC status code and the first words of the message.
func shortErr(err error) string {
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("address %q: %w", s, err)
	}
	return a, nil
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
