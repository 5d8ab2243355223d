package xdscmd

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // typed_extension_protocol_options in the bootstrap
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metaproxy/metaproxy/pkg/xds/serve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// parseBootstrap reads bootstrap YAML the way Envoy does (YAML -> JSON -> proto) and validates it,
// including the messages packed in typed_config.
func parseBootstrap(t *testing.T, raw []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("protojson: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		for name, a := range c.GetTypedExtensionProtocolOptions() {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if err := m.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	return &b
}

func TestBootstrap(t *testing.T) {
	tests := map[string]struct {
		opts        BootstrapOptions
		wantCluster string
	}{
		"ip, delta": {BootstrapOptions{NodeID: "compute-1", XDSAddress: "127.0.0.1:18000", AdminPort: 9901, APIType: "DELTA_GRPC"}, "STATIC"},
		"dns, sotw": {BootstrapOptions{NodeID: "net-node.example", XDSAddress: "xds.example:18000", AdminPort: 19000, APIType: "GRPC"}, "STRICT_DNS"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			raw, err := Bootstrap(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			b := parseBootstrap(t, raw)
			if got := b.GetNode().GetId(); got != tc.opts.NodeID {
				t.Errorf("node id = %q", got)
			}
			if got := b.GetAdmin().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != uint32(tc.opts.AdminPort) {
				t.Errorf("admin address = %v, want 127.0.0.1:%d", got, tc.opts.AdminPort)
			}
			if got := b.GetDynamicResources().GetAdsConfig().GetApiType().String(); got != tc.opts.APIType {
				t.Errorf("api type = %s", got)
			}
			if got := b.GetStaticResources().GetClusters()[0].GetType().String(); got != tc.wantCluster {
				t.Errorf("xds cluster type = %s, want %s", got, tc.wantCluster)
			}
		})
	}
	for name, o := range map[string]BootstrapOptions{
		"no node":     {XDSAddress: "h:1", AdminPort: 1, APIType: "GRPC"},
		"yaml inject": {NodeID: "a: b", XDSAddress: "h:1", AdminPort: 1, APIType: "GRPC"},
		"bad address": {NodeID: "n", XDSAddress: "h", AdminPort: 1, APIType: "GRPC"},
		"bad api":     {NodeID: "n", XDSAddress: "h:1", AdminPort: 1, APIType: "REST"},
	} {
		t.Run("rejects "+name, func(t *testing.T) {
			if _, err := Bootstrap(o); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestEnvoyBootstrapFile checks envoy/bootstrap.yaml: valid, and what `xds bootstrap --node-id
// compute-1` prints (so the file and the command cannot drift apart).
func TestEnvoyBootstrapFile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "envoy", "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	parseBootstrap(t, raw)
	var out bytes.Buffer
	if err := Main(t.Context(), []string{"bootstrap", "--node-id", "compute-1"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(raw), out.String()); diff != "" {
		t.Errorf("envoy/bootstrap.yaml differs from `xds bootstrap --node-id compute-1` (-file +command):\n%s", diff)
	}
}

func parseConfig(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var cfg Config
	fs := newFlagSet(&cfg)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	recordSet(fs, &cfg)
	return cfg, cfg.Validate()
}

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		args []string
		want []string // substrings of the error; nil = valid
	}{
		"defaults":             {},
		"file inferred":        {args: []string{"--networks-file", "/x.yaml"}},
		"netns":                {args: []string{"--source", "netns", "--node-id", "n1"}},
		"file without file":    {args: []string{"--source", "file"}, want: []string{"needs --networks-file"}},
		"networks-file unused": {args: []string{"--source", "netns", "--networks-file", "/x"}, want: []string{"only read by --source file"}},
		"all without node":     {args: []string{"--neutron-mode", "all", "--node-id", ""}, want: []string{"needs --node-id"}},
		"everything wrong": {
			args: []string{"--listen", "nope", "--source", "ldap", "--poll-interval", "10ms", "--message-timeout", "0s",
				"--nova-port", "70000", "--nova-protocol", "ftp", "--log-format", "xml", "--log-level", "loud"},
			want: []string{"--listen", "--source \"ldap\"", "--poll-interval", "--message-timeout", "--nova-port", "--nova-protocol", "--log-format", "--log-level"},
		},
		"exclusive neutron": {args: []string{"--neutron-url", "http://n:9696/", "--os-cloud", "c"}, want: []string{"exclusive"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := parseConfig(t, tc.args...)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("valid, want errors")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

func TestSettingsFromINIAndFlags(t *testing.T) {
	ini := filepath.Join(t.TempDir(), "metadata_agent.ini")
	if err := os.WriteFile(ini, []byte(`[DEFAULT]
nova_metadata_host = nova-a, nova-b
nova_metadata_port = 8775
nova_metadata_protocol = https
auth_ca_cert = /etc/ssl/nova-ca.pem
[metadata_rate_limiting]
rate_limit_enabled = true
ip_versions = 4,6
base_query_rate_limit = 20
[metadata_haproxy]
timeout_server = 60
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig(t, "--metadata-agent-ini", ini, "--nova-port", "8443")
	if err != nil {
		t.Fatal(err)
	}
	s, err := cfg.Settings()
	if err != nil {
		t.Fatal(err)
	}
	want := translate.DefaultSettings()
	want.Nova = translate.Nova{Hosts: []string{"nova-a", "nova-b"}, Port: 8443, Protocol: "https", CACert: "/etc/ssl/nova-ca.pem"}
	want.RateLimit.Enabled, want.RateLimit.IPVersions, want.RateLimit.BaseQueryRateLimit = true, []int{4, 6}, 20
	want.Timeouts.Server = 60 * time.Second
	if diff := cmp.Diff(want, s); diff != "" {
		t.Errorf("settings (-want +got):\n%s", diff)
	}

	cfg, err = parseConfig(t, "--metadata-agent-ini", ini, "--nova-protocol", "http")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := cfg.Settings(); err != nil || s.Nova.CACert != "" {
		t.Errorf("http override: CA %q, err %v; want the ini's CA dropped as neutron does", s.Nova.CACert, err)
	}
	cfg, _ = parseConfig(t, "--metadata-agent-ini", filepath.Join(t.TempDir(), "missing.ini"))
	if _, err := cfg.Settings(); err == nil {
		t.Error("missing ini accepted")
	}
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if err := Main(t.Context(), []string{"--help"}, &out, io.Discard); err != nil {
		t.Fatalf("--help: %v", err)
	}
	var cfg Config
	newFlagSet(&cfg).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "-"+f.Name) {
			t.Errorf("--help does not mention -%s", f.Name)
		}
	})
	for _, w := range []string{"Node ids", "node.id", "metadata_agent.ini"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("--help does not explain %q", w)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestMainAdminAddressInUseServesNothing: an admin address that cannot be bound stops cmd/xds at
// start with an error naming it, and the xDS address is left closed (no Envoy was served).
func TestMainAdminAddressInUseServesNothing(t *testing.T) {
	file := filepath.Join(t.TempDir(), "networks.yaml")
	if err := os.WriteFile(file, []byte("nodes:\n  n1:\n    - id: 6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	xdsAddr := freeAddr(t)
	err = Main(t.Context(), []string{"--listen", xdsAddr, "--admin-listen", taken.Addr().String(), "--networks-file", file, "--log-level", "warn"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "listen for admin") || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("Main = %v, want the admin address in use", err)
	}
	if c, err := net.Dial("tcp", xdsAddr); err == nil {
		c.Close()
		t.Errorf("the xDS address %s still accepts connections after Main returned", xdsAddr)
	}
}

// TestMainServesNetworksFile runs the whole command on a networks file and reads its listeners
// with go-control-plane's ADS client.
func TestMainServesNetworksFile(t *testing.T) {
	const id = "6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11"
	file := filepath.Join(t.TempDir(), "networks.yaml")
	if err := os.WriteFile(file, []byte("nodes:\n  n1:\n    - id: "+id+"\n      interface: tap6b1f4f4e-0d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	xdsAddr, adminAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, []string{"--listen", xdsAddr, "--admin-listen", adminAddr, "--networks-file", file, "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
	}()

	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var names []string
	deadline := time.Now().Add(10 * time.Second)
	for names == nil {
		c := sotw.NewADSClient(ctx, &corev3.Node{Id: "n1"}, resource.ListenerType)
		if err := c.InitConnect(conn, grpc.WaitForReady(true)); err != nil {
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		resp, err := c.Fetch()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range resp.Resources {
			var l listenerv3.Listener
			if err := a.UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			names = append(names, l.GetName())
		}
	}
	sort.Strings(names)
	want := []string{"metadata-network-" + id + "-ipv4", "metadata-network-" + id + "-ipv6"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("listeners (-want +got):\n%s", diff)
	}
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d, want 200 after the first poll", resp.StatusCode)
	}

	// /metrics comes from the OpenTelemetry Prometheus exporter and names the connected node.
	resp, err = http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"metaproxy_xds_connected_nodes 1", `metaproxy_xds_listeners{node="n1"} 2`, "metaproxy_xds_ready 1",
		"metaproxy_xds_poll_failures_total 0", "go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	for _, n := range MetricNames() {
		if n == serve.MetricACKs || n == serve.MetricNACKs || n == serve.MetricListenerRejections {
			continue // they appear with the first ACK, NACK or rejected listener, and this test sends none
		}
		if n == MetricNeutronFailures || slices.Contains(source.NeutronMetricNames(), n) {
			continue // the Neutron source's, and this test reads a networks file
		}
		if !strings.Contains(string(body), "\n"+n) {
			t.Errorf("/metrics lacks %s", n)
		}
	}
}

func TestExampleNetworksFileParses(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "envoy", "networks.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := source.ParseNetworks(raw, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 || len(nodes["compute-1"]) != 3 || nodes["compute-1"][0].Interface == "" && nodes["compute-1"][1].Interface == "" {
		t.Errorf("example parsed as %+v", nodes)
	}
}
