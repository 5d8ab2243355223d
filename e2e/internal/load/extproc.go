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
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
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
	// Concurrency is the number of streams in flight. Closed loop: each worker opens the next stream
	// when the previous one is done. Open loop: the most streams in flight at once.
	Concurrency int
	// Rate, when > 0, makes the run open loop: streams start on a fixed schedule of Rate per second
	// whatever the answers. A stream that finds all Concurrency workers busy waits for one, and its
	// latency counts from its scheduled start, so that queueing is not hidden (no coordinated
	// omission); only the client's own timer lateness is left out (Result.LagP99).
	Rate float64
	// Duration and Requests bound the run (whichever is reached first; at least one is required).
	Duration time.Duration
	Requests int
	// Targets are spread over the requests: closed loop, worker i takes targets i, i+Concurrency,
	// i+2*Concurrency... (so Requests = len(Targets) asks each target once); open loop, request n
	// takes target n modulo len(Targets).
	Targets []Target
	// Name labels the result.
	Name string
}

// RunExtProc sends ext_proc streams as Envoy's ext_proc filter does for one HTTP GET with
// request_headers SEND and everything else SKIP/NONE: one bidirectional stream per request, gRPC
// initial metadata with the listener's scope, one ProcessingRequest carrying request_headers
// (no header: cmd/xds's forward_rules allow none; end_of_stream), the source.address attribute,
// protocol_config and an empty metadata_context. The latency of a request is the decision as Envoy
// waits for it: from opening the stream to the HeadersResponse (Envoy continues the HTTP request
// right then). The client then half-closes and reads the stream's status before it reuses the
// worker; that whole-stream time is reported apart (StreamP50, StreamP99) and is in the throughput.
// A HeadersResponse that sets headers counts as ok; an ImmediateResponse counts as
// "immediate <status>".
func RunExtProc(ctx context.Context, o ExtProcOptions) (Result, error) {
	if o.Concurrency <= 0 || len(o.Targets) == 0 || o.Rate < 0 {
		return Result{}, errors.New("extproc load: concurrency, a rate >= 0 and at least one target are required")
	}
	if o.Conns <= 0 {
		o.Conns = 1
	}
	target := o.Address
	if !strings.HasPrefix(target, "unix://") {
		target = "passthrough:///" + target
	}
	// Messages are built and encoded once per target (Envoy builds and encodes them per request, in
	// C++; doing it again per stream in Go would spend the CPUs the servers share with this client on
	// the client, not on what is measured).
	reqs := make([]*extprocv3.ProcessingRequest, len(o.Targets))
	mds := make([]metadata.MD, len(o.Targets))
	codec := &preencoded{proto: encoding.GetCodecV2("proto"), wire: make(map[*extprocv3.ProcessingRequest][]byte, len(o.Targets))}
	for i, t := range o.Targets {
		key := contract.NetworkIDMetadata
		if t.Router {
			key = contract.RouterIDMetadata
		}
		mds[i] = metadata.Pairs(key, t.ScopeID)
		reqs[i] = envoyRequest(t.Addr, 40000+i%20000)
		b, err := proto.Marshal(reqs[i])
		if err != nil {
			return Result{}, fmt.Errorf("extproc load: encode request: %w", err)
		}
		codec.wire[reqs[i]] = b
	}
	clients := make([]extprocv3.ExternalProcessorClient, o.Conns)
	for i := range clients {
		// Envoy's gRPC client names the cluster as :authority.
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(contract.ExtProcClusterName), grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec)))
		if err != nil {
			return Result{}, fmt.Errorf("extproc load: dial %s: %w", o.Address, err)
		}
		defer cc.Close()
		cc.Connect()
		clients[i] = extprocv3.NewExternalProcessorClient(cc)
	}
	// Warm the connections so that the first requests do not measure connection setup.
	for _, c := range clients {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, _, err := oneStream(metadata.NewOutgoingContext(wctx, mds[0]), c, reqs[0])
		cancel()
		if err != nil {
			return Result{}, fmt.Errorf("extproc load: first stream to %s: %w", o.Address, err)
		}
	}
	r := &extprocRun{o: o, clients: clients, reqs: reqs, ctxs: make([]context.Context, len(mds))}
	for i, md := range mds {
		r.ctxs[i] = metadata.NewOutgoingContext(ctx, md)
	}
	name := o.Name
	if name == "" {
		name = "extproc " + o.Address
	}
	start := time.Now()
	b, err := newBounds(start, o.Duration, o.Requests)
	if err != nil {
		return Result{}, err
	}
	if o.Rate > 0 {
		r.open(ctx, start, b)
	} else {
		r.closed(ctx, b)
	}
	res := r.rec.result(name, o.Concurrency, time.Since(start))
	res.Rate = o.Rate
	return res, nil
}

// extprocRun is one RunExtProc run once its connections and messages are ready.
type extprocRun struct {
	o       ExtProcOptions
	clients []extprocv3.ExternalProcessorClient
	reqs    []*extprocv3.ProcessingRequest
	ctxs    []context.Context // the run's context with each target's initial metadata
	rec     recorder
}

// one runs the stream for target i from the given start and records it.
func (r *extprocRun) one(ctx context.Context, s *slot, c extprocv3.ExternalProcessorClient, i int, from time.Time) bool {
	kind, answered, err := oneStream(r.ctxs[i], c, r.reqs[i])
	full := time.Since(from)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		kind, answered = "grpc: "+shortErr(err), time.Now()
	}
	s.addStream(answered.Sub(from), full, kind)
	return true
}

// closed runs Concurrency workers, each opening its next stream when the previous one is done.
func (r *extprocRun) closed(ctx context.Context, b *bounds) {
	var wg sync.WaitGroup
	for w := range r.o.Concurrency {
		s := r.rec.newSlot()
		c := r.clients[w%len(r.clients)]
		wg.Go(func() {
			i := w % len(r.reqs)
			for ctx.Err() == nil && b.next() {
				if !r.one(ctx, s, c, i, time.Now()) {
					return
				}
				i = (i + r.o.Concurrency) % len(r.reqs)
			}
		})
	}
	wg.Wait()
}

// scheduled is one open-loop request: its number and when its latency counts from.
type scheduled struct {
	n    int
	from time.Time
	lag  time.Duration // the client's own timer lateness, left out of from
}

// open starts request n at start + n/Rate (computed, not ticked, so that a late wake-up does not
// shift the rest of the schedule) and hands it to the first free of Concurrency workers. When all
// are busy the schedule waits, and the requests behind it count that wait in their latency: their
// latency runs from their scheduled start. What is left out is the client's own timer: Go wakes a
// sleep up to a millisecond late on an idle machine, so a request due while the scheduler slept
// counts from the wake-up (that lateness is reported as LagP99).
func (r *extprocRun) open(ctx context.Context, start time.Time, b *bounds) {
	work := make(chan scheduled)
	var wg sync.WaitGroup
	for w := range r.o.Concurrency {
		s := r.rec.newSlot()
		c := r.clients[w%len(r.clients)]
		wg.Go(func() {
			for j := range work {
				s.addLag(j.lag)
				if !r.one(ctx, s, c, j.n%len(r.reqs), j.from) {
					return
				}
			}
		})
	}
	interval := float64(time.Second) / r.o.Rate
	var woke time.Time // the scheduler's last wake-up from a sleep (not from a wait for a worker)
schedule:
	for n := 0; ctx.Err() == nil; n++ {
		at := start.Add(time.Duration(float64(n) * interval))
		if !b.deadline.IsZero() && !at.Before(b.deadline) {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
			woke = time.Now()
		}
		if !b.next() {
			break
		}
		j := scheduled{n: n, from: at}
		if woke.After(at) {
			j.from, j.lag = woke, woke.Sub(at)
		}
		select {
		case work <- j:
		case <-ctx.Done():
			break schedule
		}
	}
	close(work)
	wg.Wait()
}

// oneStream runs one ext_proc stream as Envoy does for a GET: open it, send request_headers, wait
// for the answer (answered is when it came), then half-close and read the status. Envoy's filter
// (source/extensions/filters/http/ext_proc/ext_proc.cc, processor_state.cc) calls continueDecoding
// from the HeadersResponse itself and closes the stream only afterwards: right after that answer
// (Envoy >= 1.37) or when the HTTP request ends, with a half-close and a reset, or a half-close and
// an asynchronous wait for the status under ext_proc_graceful_grpc_close. Closing never delays the
// request; here it is done before the worker's next stream so that streams do not pile up.
func oneStream(ctx context.Context, c extprocv3.ExternalProcessorClient, req *extprocv3.ProcessingRequest) (kind string, answered time.Time, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.Process(ctx)
	if err != nil {
		return "", answered, err
	}
	if err := st.Send(req); err != nil {
		return "", answered, err
	}
	resp, err := st.Recv()
	if err != nil {
		return "", answered, err
	}
	answered = time.Now()
	if err := st.CloseSend(); err != nil {
		return "", answered, err
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			err = errors.New("unexpected second response")
		}
		return "", answered, err
	}
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if len(r.RequestHeaders.GetResponse().GetHeaderMutation().GetSetHeaders()) == 0 {
			return "headers response without mutation", answered, nil
		}
		return "", answered, nil
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return fmt.Sprintf("immediate %d", r.ImmediateResponse.GetStatus().GetCode()), answered, nil
	default:
		return fmt.Sprintf("unexpected response %T", r), answered, nil
	}
}

// preencoded is gRPC's proto codec, except that the requests prepared before the run go out as the
// bytes they were encoded to then. wire is only read once the run starts.
type preencoded struct {
	proto encoding.CodecV2
	wire  map[*extprocv3.ProcessingRequest][]byte
}

var _ encoding.CodecV2 = (*preencoded)(nil)

func (c *preencoded) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*extprocv3.ProcessingRequest); ok {
		if b, ok := c.wire[r]; ok {
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
	}
	return c.proto.Marshal(v)
}

func (c *preencoded) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// Name is the proto codec's: the content-type stays application/grpc+proto.
func (c *preencoded) Name() string { return c.proto.Name() }

// envoyRequest is the request_headers message Envoy sends for a VM's GET from addr through a
// listener of cmd/xds: its forward_rules allow no request header (pkg/xds/translate), so the header
// map is there but empty, as Envoy's headersToProto leaves it when nothing may be forwarded.
func envoyRequest(addr netip.Addr, port int) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     &corev3.HeaderMap{},
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
