package extproccmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
)

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFlagsOverrideConfigFile(t *testing.T) {
	file := writeFile(t, "extproc.yaml", "listen: 127.0.0.1:7000\ncache:\n  ttl: 30s\n  size: 5\nlog_format: json\n")
	cfg, _, err := parseArgs("extproc", []string{"--config", file, "--cache-ttl", "1m"}, nil, func(*flag.FlagSet) {})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7000" || cfg.Cache.TTL != time.Minute || cfg.Cache.Size != 5 || cfg.LogFormat != "json" {
		t.Errorf("config %+v", cfg)
	}
	if cfg.Cache.NegativeTTL != DefaultConfig().Cache.NegativeTTL {
		t.Errorf("unset value lost its default: %v", cfg.Cache.NegativeTTL)
	}
}

func TestConfigFileRejectsUnknownKeys(t *testing.T) {
	file := writeFile(t, "extproc.yaml", "lisen: typo\n")
	if _, _, err := parseArgs("extproc", []string{"--config", file}, nil, func(*flag.FlagSet) {}); err == nil {
		t.Fatal("a misspelt key was accepted")
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := DefaultConfig()
	c.PortsFile, c.Demo = "x", true
	c.Cache.Size = 0
	c.LogFormat = "xml"
	err := c.Validate()
	for _, want := range []string{"one port source", "--cache-size", "--log-format"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestSecretPrecedence(t *testing.T) {
	file := writeFile(t, "secret", "from-file\n")
	ini := writeFile(t, "metadata_agent.ini", "[DEFAULT]\nmetadata_proxy_shared_secret = from-ini\n")
	tests := map[string]struct {
		cfg  Config
		env  string
		want string
	}{
		"file beats env and ini": {cfg: Config{SecretFile: file, MetadataAgentINI: ini}, env: "from-env", want: "from-file"},
		"env beats ini":          {cfg: Config{MetadataAgentINI: ini}, env: "from-env", want: "from-env"},
		"ini last":               {cfg: Config{MetadataAgentINI: ini}, want: "from-ini"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv(SecretEnv, tc.env)
			got, _, err := loadSecret(tc.cfg, map[string]string{ini: "from-ini"}[tc.cfg.MetadataAgentINI])
			if err != nil || string(got) != tc.want {
				t.Errorf("secret %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	t.Run("empty file is an error", func(t *testing.T) {
		if _, _, err := loadSecret(Config{SecretFile: writeFile(t, "s", "\n")}, ""); err == nil {
			t.Fatal("want an error")
		}
	})
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// testSecret is the shared secret run gives cmd/extproc: it must never reach the log.
const testSecret = "a-secret-that-must-not-be-logged"

// running is cmd/extproc as run started it.
type running struct {
	listen string // the gRPC listener as bound: unix://PATH or HOST:PORT
	admin  string // the admin listener as bound
	logs   *syncBuffer
	stop   func() // stops Main and fails the test if it returned an error; idempotent
}

// run is start, returning once /readyz answers 200.
func run(t *testing.T, args ...string) *running {
	t.Helper()
	r := start(t, args...)
	waitFor(t, func() bool {
		resp, err := http.Get("http://" + r.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return r
}

// start starts Main with args plus, unless they give them, a UNIX socket to listen on and the
// demo ports file (not with --demo or --os-cloud); always an admin listener on 127.0.0.1:0 and
// JSON logs. It returns once both listeners are bound; Main stops when the test ends. The addresses
// are read from the "extproc started" line, which Main writes once both listeners are bound and
// before anything serves or reports ready: no port is picked by closing a listener and hoping it
// stays free.
func start(t *testing.T, args ...string) *running {
	t.Helper()
	t.Setenv(SecretEnv, testSecret)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	if !slices.Contains(args, "--listen") {
		args = append(args, "--listen", "unix://"+filepath.Join(t.TempDir(), "extproc.sock"))
	}
	if !slices.Contains(args, "--demo") && !slices.Contains(args, "--ports-file") && !slices.Contains(args, "--os-cloud") {
		args = append(args, "--ports-file", writeFile(t, "ports.json", string(demo.Ports())))
	}
	args = append(args, "--admin-listen", "127.0.0.1:0", "--log-format", "json")
	r := &running{logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	var mainErr error
	go func() {
		defer close(exited)
		mainErr = Main(ctx, args, io.Discard, r.logs)
	}()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			<-exited
			if mainErr != nil {
				t.Errorf("Main: %v\n%s", mainErr, r.logs)
			}
		})
	}
	t.Cleanup(r.stop)

	waitFor(t, func() bool {
		select {
		case <-exited:
			t.Fatalf("Main returned before serving: %v\n%s", mainErr, r.logs)
		default:
		}
		for line := range strings.Lines(r.logs.String()) {
			var entry struct{ Msg, Listen, Admin string }
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "extproc started" {
				r.listen, r.admin = entry.Listen, entry.Admin
			}
		}
		return r.admin != ""
	})
	return r
}

// dial connects to r's gRPC listener in plain text (a UNIX socket, or TCP with --demo) and waits
// until gRPC health says SERVING.
func (r *running) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(r.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	waitFor(t, func() bool {
		h, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	return conn
}

// TestServeFromPortsFile runs the whole command: config, ports file, secret from env, gRPC on a UNIX
// socket, health and /readyz; and checks the secret and signature never reach the log.
func TestServeFromPortsFile(t *testing.T) {
	r := run(t, "--log-level", "debug")
	defer func() {
		r.stop()
		if strings.Contains(r.logs.String(), testSecret) {
			t.Errorf("the secret is in the log:\n%s", r.logs)
		}
	}()
	conn := r.dial(t)

	// gRPC health says SERVING: /readyz answers on the admin listener, bound before it.
	resp, err := http.Get("http://" + r.admin + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	resp.Body.Close()

	ctx := context.Background()
	for _, ip := range []string{"10.0.0.5", "10.0.0.9"} {
		sctx := metadata.AppendToOutgoingContext(ctx, contract.NetworkIDMetadata, demo.NetworkA)
		stream, err := extprocv3.NewExternalProcessorClient(conn).Process(sctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&extprocv3.ProcessingRequest{
			Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}},
			Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
				contract.SourceAddressAttribute: structpb.NewStringValue(ip + ":1234")}}},
		})
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		stream.CloseSend()
		if ip == "10.0.0.5" && resp.GetRequestHeaders() == nil {
			t.Errorf("known VM: %v", resp)
		}
		if ip == "10.0.0.9" && resp.GetImmediateResponse().GetStatus().GetCode() != 404 {
			t.Errorf("unknown VM: %v", resp)
		}
	}
	waitFor(t, func() bool { return strings.Contains(r.logs.String(), "metadata request not forwarded") })
}

// TestListenersAreOpenedAtStart: an admin address in use is an error at start, before anything
// serves, not a background failure after health said SERVING.
func TestListenersAreOpenedAtStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	t.Setenv(SecretEnv, "s")
	err = Main(context.Background(), []string{"--listen", "unix://" + filepath.Join(t.TempDir(), "s.sock"),
		"--admin-listen", taken.Addr().String(), "--ports-file", writeFile(t, "p.json", string(demo.Ports()))}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "admin listener") {
		t.Fatalf("err = %v, want the admin listener's error", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestResolveSubcommand(t *testing.T) {
	var out bytes.Buffer
	err := Main(context.Background(), []string{"resolve", "--demo", "--network", demo.NetworkB, "--ip", "10.0.0.5"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"x-instance-id: " + demo.InstanceB5, "x-tenant-id: " + demo.ProjectBob, "x-forwarded-for: 10.0.0.5", "--show-signature"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	err = Main(context.Background(), []string{"resolve", "--demo", "--network", demo.NetworkA, "--ip", "10.0.0.9"}, &out, io.Discard)
	if !errors.Is(err, ErrReported) || !strings.Contains(out.String(), "answered 404") {
		t.Errorf("unknown VM: err %v, output %s", err, out.String())
	}
}

func TestMissingSecretIsAClearError(t *testing.T) {
	t.Setenv(SecretEnv, "")
	err := Main(context.Background(), []string{"--ports-file", writeFile(t, "p.json", `{"ports":[]}`), "--listen", "unix://" + filepath.Join(t.TempDir(), "s.sock"), "--admin-listen", ""}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no shared secret") {
		t.Fatalf("err = %v", err)
	}
}
