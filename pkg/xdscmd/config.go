package xdscmd

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/metaproxy/metaproxy/pkg/agentini"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
	"github.com/metaproxy/metaproxy/pkg/xds/serve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// Config is everything cmd/xds can be told, from flags. Settings for nova, timeouts and rate
// limiting come from metadata_agent.ini first and flags override them.
type Config struct {
	Listen      string
	AdminListen string

	// TLS is the xDS server's mutual TLS; NodeBinding ties node ids to client certificates
	// (serve.ParseNodeBinding). InsecurePlaintext allows plain text on a TCP address that is not
	// loopback (labs only).
	TLS               tlsfiles.Files
	NodeBinding       string
	InsecurePlaintext bool

	Source       string // neutron, netns or file ("" = file when NetworksFile is set, else neutron)
	NetworksFile string
	NeutronURL   string
	OSCloud      string
	NeutronMode  string
	Routers      bool
	NodeID       string
	NetnsDir     string
	PollInterval time.Duration

	MetadataAgentINI string
	Nova             NovaFlags

	ExtProcAddress string
	MessageTimeout time.Duration
	// EnvoySDSDir, ExtProcServerName and ExtProcPlaintext are how Envoy reaches a TCP
	// cmd/extproc (translate.ExtProc).
	EnvoySDSDir       string
	ExtProcServerName string
	ExtProcPlaintext  bool

	EnvoyTracingCollector string

	LogFormat string
	LogLevel  string
}

// NovaFlags override metadata_agent.ini's nova_metadata_* settings; only flags given on the command
// line are applied (Set records which).
type NovaFlags struct {
	Host, Protocol, CACert, ClientCert, ClientKey string
	Port                                          int
	Insecure                                      bool
	Set                                           map[string]bool
}

// defaultNodeID is the host name, as Envoy's node.id defaults to in envoy/bootstrap.yaml.
func defaultNodeID() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}

// newFlagSet declares every flag of `xds` on cfg.
func newFlagSet(cfg *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("xds", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:18000", "`HOST:PORT` or unix:///PATH of the xDS gRPC server (ADS, state of the world and delta) Envoys connect to")
	fs.StringVar(&cfg.TLS.Cert, "tls-cert", "", "xDS server certificate chain `FILE` (PEM; re-read when it changes): mutual TLS, as Envoys' bootstraps from `xds bootstrap` expect")
	fs.StringVar(&cfg.TLS.Key, "tls-key", "", "private key `FILE` of --tls-cert (not readable by other users)")
	fs.StringVar(&cfg.TLS.ClientCA, "tls-client-ca", "", "CA bundle `FILE` that signs the Envoys' client certificates; without a valid one a client gets nothing")
	fs.StringVar(&cfg.NodeBinding, "node-binding", "dns", "which node ids a client certificate may ask for: `dns` (a DNS SAN equal to the node id), spiffe://TRUST-DOMAIN (URI SAN spiffe://TRUST-DOMAIN/metaproxy/node/<id>) or none (any node id; one certificate shared by all nodes)")
	fs.BoolVar(&cfg.InsecurePlaintext, "insecure-plaintext", false, "serve xDS without TLS on a TCP address other than loopback (labs only: anyone who reaches it gets any node's configuration)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", "127.0.0.1:9103", "`HOST:PORT` serving /healthz, /readyz and /metrics (empty: off)")
	fs.StringVar(&cfg.Source, "source", "", "where networks come from: `neutron`, netns or file (default: file when --networks-file is given, else neutron)")
	fs.StringVar(&cfg.NetworksFile, "networks-file", "", "YAML or JSON `FILE` mapping node ids to networks (source file; re-read every poll)")
	fs.StringVar(&cfg.NeutronURL, "neutron-url", "", "noauth Neutron endpoint `URL`, e.g. http://127.0.0.1:9696/ (skips Keystone)")
	fs.StringVar(&cfg.OSCloud, "os-cloud", "", "clouds.yaml entry `NAME` for Neutron (default: OS_CLOUD, then the OS_* variables)")
	fs.StringVar(&cfg.NeutronMode, "neutron-mode", string(source.ModeAgents), "`agents`: follow DHCP/L3 agent scheduling, node id = agent host; all: every network with a DHCP-enabled subnet, served by --node-id")
	fs.BoolVar(&cfg.Routers, "routers", false, "also serve routers (listeners in qrouter-<id>, Neutron's router-mode metadata proxy)")
	fs.StringVar(&cfg.NodeID, "node-id", defaultNodeID(), "node `ID` that serves everything with --neutron-mode all and --source netns (the Envoy's node.id)")
	fs.StringVar(&cfg.NetnsDir, "netns-dir", source.DefaultNetnsDir, "`DIR` holding the qdhcp-/qrouter- namespaces (source netns; default namespace paths)")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", 30*time.Second, "how often the source is asked again; a change reaches Envoy within one interval")
	fs.StringVar(&cfg.MetadataAgentINI, "metadata-agent-ini", "", "neutron's metadata_agent.ini `FILE` to read nova, [metadata_rate_limiting] and [metadata_haproxy] settings from (default: neutron's defaults)")
	cfg.Nova.Set = map[string]bool{}
	fs.StringVar(&cfg.Nova.Host, "nova-host", "", "override nova_metadata_host: `HOST`[,HOST...]")
	fs.IntVar(&cfg.Nova.Port, "nova-port", 0, "override nova_metadata_port")
	fs.StringVar(&cfg.Nova.Protocol, "nova-protocol", "", "override nova_metadata_protocol: http or https")
	fs.StringVar(&cfg.Nova.CACert, "nova-ca-cert", "", "override auth_ca_cert: CA `FILE` verifying nova's certificate")
	fs.StringVar(&cfg.Nova.ClientCert, "nova-client-cert", "", "override nova_client_cert: client certificate `FILE`")
	fs.StringVar(&cfg.Nova.ClientKey, "nova-client-key", "", "override nova_client_priv_key: client key `FILE`")
	fs.BoolVar(&cfg.Nova.Insecure, "nova-insecure", false, "override nova_metadata_insecure: do not verify nova's certificate")
	fs.StringVar(&cfg.ExtProcAddress, "extproc-address", "unix:///run/metaproxy/extproc.sock", "where Envoy reaches cmd/extproc: unix:///`PATH` or HOST:PORT (then mutual TLS: see --envoy-sds-dir)")
	fs.StringVar(&cfg.EnvoySDSDir, "envoy-sds-dir", translate.DefaultSDSDir, "`DIR` on the Envoys' hosts with the SDS files of their client certificate and CA (`xds sds`), for a TCP --extproc-address")
	fs.StringVar(&cfg.ExtProcServerName, "extproc-server-name", "", "subject alternative `NAME` (DNS or IP) of cmd/extproc's certificate, for a TCP --extproc-address (default: its host)")
	fs.BoolVar(&cfg.ExtProcPlaintext, "extproc-plaintext", false, "send Envoy to a TCP --extproc-address without TLS (only a lab's `extproc --demo` serves plain TCP)")
	fs.DurationVar(&cfg.MessageTimeout, "message-timeout", 5*time.Second, "ext_proc message_timeout: how long Envoy waits for cmd/extproc (a cache miss costs a Neutron round trip)")
	fs.StringVar(&cfg.EnvoyTracingCollector, "envoy-tracing-collector", "", "turn on Envoy's OpenTelemetry tracing to the OTLP/gRPC collector at `HOST:PORT` (cluster otel_collector; empty: off)")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	return fs
}

// recordSet notes which nova flags were given, so that only those override the ini file.
func recordSet(fs *flag.FlagSet, cfg *Config) {
	fs.Visit(func(f *flag.Flag) {
		if strings.HasPrefix(f.Name, "nova-") {
			cfg.Nova.Set[f.Name] = true
		}
	})
}

// SourceKind returns the effective source.
func (c Config) SourceKind() string {
	if c.Source != "" {
		return c.Source
	}
	if c.NetworksFile != "" {
		return "file"
	}
	return "neutron"
}

// Validate returns every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c.validateListen(bad)
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			bad("--admin-listen %q: %v", c.AdminListen, err)
		}
	}
	switch c.SourceKind() {
	case "file":
		if c.NetworksFile == "" {
			bad("--source file needs --networks-file")
		}
	case "netns":
		if c.NodeID == "" {
			bad("--source netns needs --node-id")
		}
	case "neutron":
		if c.NeutronURL != "" && c.OSCloud != "" {
			bad("--neutron-url and --os-cloud are exclusive")
		}
		switch source.NeutronMode(c.NeutronMode) {
		case source.ModeAgents:
		case source.ModeAll:
			if c.NodeID == "" {
				bad("--neutron-mode all needs --node-id")
			}
		default:
			bad("--neutron-mode %q: want agents or all", c.NeutronMode)
		}
	default:
		bad("--source %q: want neutron, netns or file", c.Source)
	}
	if c.NetworksFile != "" && c.SourceKind() != "file" {
		bad("--networks-file is only read by --source file")
	}
	if c.PollInterval < time.Second {
		bad("--poll-interval %v: want at least 1s", c.PollInterval)
	}
	if c.MessageTimeout <= 0 {
		bad("--message-timeout must be positive")
	}
	if c.Nova.Set["nova-port"] && (c.Nova.Port < 1 || c.Nova.Port > 65535) {
		bad("--nova-port %d out of range", c.Nova.Port)
	}
	if c.Nova.Set["nova-protocol"] && c.Nova.Protocol != "http" && c.Nova.Protocol != "https" {
		bad("--nova-protocol %q: want http or https", c.Nova.Protocol)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("--log-format %q: want text or json", c.LogFormat)
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		bad("--log-level: %v", err)
	}
	return errors.Join(errs...)
}

// validateListen checks how the xDS listener is protected: mutual TLS, or plain text only on a
// UNIX socket, on loopback, or with --insecure-plaintext.
func (c Config) validateListen(bad func(string, ...any)) {
	tlsGiven := c.TLS.Given()
	if tlsGiven && (c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.ClientCA == "") {
		bad("--tls-cert, --tls-key and --tls-client-ca go together: give all three")
	}
	if _, err := serve.ParseNodeBinding(c.NodeBinding); err != nil {
		bad("--node-binding: %v", err)
	}
	if path, ok := strings.CutPrefix(c.Listen, "unix://"); ok {
		if !filepath.IsAbs(path) {
			bad("--listen %q: want unix:///absolute/path", c.Listen)
		}
		return
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		bad("--listen %q: want HOST:PORT or unix:///PATH: %v", c.Listen, err)
		return
	}
	if !tlsGiven && !c.InsecurePlaintext && !isLoopback(host) {
		bad("--listen %s without TLS: whoever reaches it could fetch any node's configuration and repoint its listeners: give --tls-cert, --tls-key and --tls-client-ca (mutual TLS; `xds bootstrap` writes the Envoy side), listen on a UNIX socket or loopback, or add --insecure-plaintext in a lab", c.Listen)
	}
}

// isLoopback reports whether host is a loopback address or localhost.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// prepareTLS loads the TLS files (every problem at once), or returns nil without TLS.
func (c Config) prepareTLS(log *slog.Logger) (*tlsfiles.Server, error) {
	if c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.ClientCA == "" {
		return nil, nil
	}
	return tlsfiles.NewServer(c.TLS, tlsfiles.Options{Flags: [3]string{"--tls-cert", "--tls-key", "--tls-client-ca"}, Log: log})
}

// Settings reads metadata_agent.ini (when given), applies the flag overrides and returns the
// translation settings, validated.
func (c Config) Settings() (translate.Settings, error) {
	ini := agentini.Default()
	if c.MetadataAgentINI != "" {
		var err error
		if ini, err = agentini.Load(c.MetadataAgentINI); err != nil {
			return translate.Settings{}, err
		}
	}
	n := ini.Nova
	set := c.Nova.Set
	if set["nova-host"] {
		n.Host = c.Nova.Host
	}
	if set["nova-port"] {
		n.Port = c.Nova.Port
	}
	if set["nova-protocol"] {
		n.Protocol = c.Nova.Protocol
	}
	if set["nova-ca-cert"] {
		n.CACert = c.Nova.CACert
	}
	if set["nova-client-cert"] {
		n.ClientCert = c.Nova.ClientCert
	}
	if set["nova-client-key"] {
		n.ClientKey = c.Nova.ClientKey
	}
	if set["nova-insecure"] {
		n.Insecure = c.Nova.Insecure
	}
	s := translate.Settings{
		Nova: translate.Nova{
			Hosts: translate.SplitHosts(n.Host), Port: n.Port, Protocol: n.Protocol,
			CACert: n.CACert, ClientCert: n.ClientCert, ClientKey: n.ClientKey, Insecure: n.Insecure,
		},
		ExtProc: translate.ExtProc{Address: c.ExtProcAddress, MessageTimeout: c.MessageTimeout, Plaintext: c.ExtProcPlaintext,
			TLS: translate.EnvoyTLS{SDSDir: c.EnvoySDSDir, ServerName: c.ExtProcServerName}},
		EnvoyTracing: translate.EnvoyTracing{Collector: c.EnvoyTracingCollector},
		Timeouts: translate.Timeouts{
			HTTPRequest: ini.Haproxy.HTTPRequest, Connect: ini.Haproxy.Connect, Client: ini.Haproxy.Client,
			Server: ini.Haproxy.Server, KeepAlive: ini.Haproxy.HTTPKeepAlive,
		},
		RateLimit: translate.RateLimit{
			Enabled: ini.RateLimit.Enabled, IPVersions: ini.RateLimit.IPVersions,
			BaseWindow: ini.RateLimit.BaseWindow, BaseQueryRateLimit: ini.RateLimit.BaseQueryRateLimit,
			BurstWindow: ini.RateLimit.BurstWindow, BurstQueryRateLimit: ini.RateLimit.BurstQueryRateLimit,
		},
	}
	if s.Nova.Protocol == "http" {
		// neutron ignores the TLS settings of metadata_agent.ini for http; so do we. Given as flags
		// they are a mistake and Validate says so.
		if !set["nova-ca-cert"] {
			s.Nova.CACert = ""
		}
		if !set["nova-client-cert"] {
			s.Nova.ClientCert = ""
		}
		if !set["nova-client-key"] {
			s.Nova.ClientKey = ""
		}
	}
	if err := s.Validate(); err != nil {
		return translate.Settings{}, err
	}
	return s, nil
}
