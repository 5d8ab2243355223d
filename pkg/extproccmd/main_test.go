package extproccmd

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
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

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
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

// TestServeFromPortsFile runs the whole command: config, ports file, secret from env, gRPC on a UNIX
// socket, health and /readyz; and checks the secret and signature never reach the log.
func TestServeFromPortsFile(t *testing.T) {
	const secret = "a-secret-that-must-not-be-logged"
	t.Setenv(SecretEnv, secret)
	ports := writeFile(t, "ports.json", string(demo.Ports()))
	sock := filepath.Join(t.TempDir(), "extproc.sock")
	admin := freePort(t)
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, []string{"--listen", "unix://" + sock, "--admin-listen", admin, "--ports-file", ports, "--log-format", "json", "--log-level", "debug"}, io.Discard, logs)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the secret is in the log:\n%s", logs)
		}
	}()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, func() bool {
		r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	resp.Body.Close()

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
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		stream.CloseSend()
		if ip == "10.0.0.5" && r.GetRequestHeaders() == nil {
			t.Errorf("known VM: %v", r)
		}
		if ip == "10.0.0.9" && r.GetImmediateResponse().GetStatus().GetCode() != 404 {
			t.Errorf("unknown VM: %v", r)
		}
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "metadata request not forwarded") })
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
