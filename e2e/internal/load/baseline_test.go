package load

// The machine baseline: the smallest round trips this machine can make, to read the ext_proc
// latencies against. Run with:
//
//	go test -run '^$' -bench Baseline -benchtime 20000x ./e2e/internal/load/
//
// Each reports ns/op and the p50/p99 of single round trips (p50-ns, p99-ns).

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/extproc"
)

// echoSocketEnv makes the test binary a UNIX-socket echo server on that path (for the two-process
// ping-pong) instead of running tests.
const echoSocketEnv = "LOAD_BASELINE_ECHO_SOCKET"

func TestMain(m *testing.M) {
	if p := os.Getenv(echoSocketEnv); p != "" {
		if err := serveEcho(p); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveEcho echoes every connection on a UNIX socket at path until its listener fails.
func serveEcho(path string) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// roundTrips times n calls of rt and reports their p50 and p99 besides ns/op.
func roundTrips(b *testing.B, rt func() error) {
	b.Helper()
	lat := make([]time.Duration, 0, 1<<16)
	for b.Loop() {
		t0 := time.Now()
		if err := rt(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(quantile(lat, .50)), "p50-ns")
	b.ReportMetric(float64(quantile(lat, .99)), "p99-ns")
}

// pingPong sends 64 bytes over c and reads them back.
func pingPong(c net.Conn) func() error {
	buf := make([]byte, 64)
	return func() error {
		if _, err := c.Write(buf); err != nil {
			return err
		}
		_, err := io.ReadFull(c, buf)
		return err
	}
}

// BenchmarkBaselineUnixPingPong: 64 bytes there and back over a UNIX stream socket, to a goroutine
// of this process and to another process (what ext_proc over unix:// rides on).
func BenchmarkBaselineUnixPingPong(b *testing.B) {
	b.Run("same-process", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "echo.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrips(b, pingPong(c))
	})
	b.Run("two-processes", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "echo.sock")
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), echoSocketEnv+"="+path)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		var c net.Conn
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if c, err = net.Dial("unix", path); err == nil {
				break
			}
		}
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrips(b, pingPong(c))
	})
}

// serveGRPC serves the services register adds on a UNIX socket and returns a connected client.
func serveGRPC(b *testing.B, register func(*grpc.Server)) *grpc.ClientConn {
	b.Helper()
	path := filepath.Join(b.TempDir(), "grpc.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go func() { _ = g.Serve(l) }()
	b.Cleanup(g.Stop)
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return cc
}

// emptyProcessor answers every ext_proc message with an empty response: the gRPC stream without
// any decision or payload.
type emptyProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (emptyProcessor) Process(st extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := st.Send(&extprocv3.ProcessingResponse{}); err != nil {
			return err
		}
	}
}

// BenchmarkBaselineGRPC: the smallest gRPC round trips over a UNIX socket in one process: a unary
// health check, a message on a stream kept open, and a new bidirectional stream per message with
// empty messages (ext_proc's shape without its payload): open, send, receive, half-close, status.
func BenchmarkBaselineGRPC(b *testing.B) {
	ctx := context.Background()
	b.Run("unary-health-check", func(b *testing.B) {
		cc := serveGRPC(b, func(g *grpc.Server) { healthpb.RegisterHealthServer(g, health.NewServer()) })
		c := healthpb.NewHealthClient(cc)
		roundTrips(b, func() error {
			_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		})
	})
	b.Run("message-on-open-stream", func(b *testing.B) {
		cc := serveGRPC(b, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, emptyProcessor{}) })
		st, err := extprocv3.NewExternalProcessorClient(cc).Process(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = st.CloseSend() }()
		roundTrips(b, func() error {
			if err := st.Send(&extprocv3.ProcessingRequest{}); err != nil {
				return err
			}
			_, err := st.Recv()
			return err
		})
	})
	b.Run("stream-per-message", func(b *testing.B) {
		cc := serveGRPC(b, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, emptyProcessor{}) })
		c := extprocv3.NewExternalProcessorClient(cc)
		roundTrips(b, func() error {
			_, _, err := oneStream(ctx, c, &extprocv3.ProcessingRequest{})
			return err
		})
	})
}

// BenchmarkWholeStream: one ext_proc stream per request, as Envoy opens them, client and server in
// this process over a UNIX socket, against the floor and against cmd/extproc's server and decision
// (a cached VM). The difference in allocs/op is what cmd/extproc's server allocates per request
// above the floor's (whose answer is one shared message):
//
//	go test -run '^$' -bench WholeStream -benchmem ./e2e/internal/load
func BenchmarkWholeStream(b *testing.B) {
	b.Run("floor", func(b *testing.B) {
		wholeStreams(b, nil, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, NewFloor()) })
	})
	b.Run("cmd-extproc", func(b *testing.B) {
		d, targets := newDecider(b, 1, 1)
		srv := extproc.NewServer(d, slog.New(slog.DiscardHandler))
		wholeStreams(b, &targets[0], func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, srv) })
	})
}

// wholeStreams runs b.N streams, two at a time (RunParallel), for the VM t (or a made-up one).
func wholeStreams(b *testing.B, t *Target, register func(*grpc.Server)) {
	if t == nil {
		t = &Target{ScopeID: "bbbbbbbb-0000-4000-8000-00000000000b", Addr: netip.MustParseAddr("10.0.0.5")}
	}
	c := extprocv3.NewExternalProcessorClient(serveGRPC(b, register))
	ctx := metadata.AppendToOutgoingContext(context.Background(), contract.NetworkIDMetadata, t.ScopeID)
	req := envoyRequest(t.Addr, 41234)
	if kind, _, err := oneStream(ctx, c, req); err != nil || kind != "" {
		b.Fatalf("first stream: %q %v; want the signed mutation", kind, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if kind, _, err := oneStream(ctx, c, req); err != nil || kind != "" {
				b.Errorf("stream: %q %v; want the signed mutation", kind, err)
				return
			}
		}
	})
}
