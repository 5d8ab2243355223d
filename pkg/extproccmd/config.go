package extproccmd

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/extproc"
	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/secretfile"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
)

// Config is cmd/extproc's configuration: defaults, then the YAML file given with --config, then
// flags (flags win). The shared secret is never a flag value: see SecretFile.
type Config struct {
	Listen      string `yaml:"listen"`
	AdminListen string `yaml:"admin_listen"`

	// AllowedPeers are the users and groups (listen.ResolvePeers syntax) whose processes may
	// connect to a UNIX socket Listen: every other peer is closed at accept (SO_PEERCRED).
	AllowedPeers []string `yaml:"allowed_peers"`
	// TLS is the mutual TLS a TCP Listen requires.
	TLS TLSConfig `yaml:"tls"`

	// MetadataAgentINI is an existing neutron metadata_agent.ini; its metadata_proxy_shared_secret
	// is used when neither SecretFile nor METAPROXY_SHARED_SECRET gives one.
	MetadataAgentINI string `yaml:"metadata_agent_ini"`
	// SecretFile holds the shared secret (trailing newline ignored). Overrides the environment.
	SecretFile string `yaml:"secret_file"`

	// Port source: exactly one of PortsFile, Neutron (OSCloud / NeutronURL / OS_CLOUD / OS_*), Demo.
	PortsFile      string        `yaml:"ports_file"`
	OSCloud        string        `yaml:"os_cloud"`
	NeutronURL     string        `yaml:"neutron_url"`
	NeutronTimeout time.Duration `yaml:"neutron_timeout"`
	// NeutronMaxConcurrent caps the Neutron lookups in flight at once (and sizes the pool of idle
	// connections to Neutron).
	NeutronMaxConcurrent int  `yaml:"neutron_max_concurrent"`
	Demo                 bool `yaml:"-"`

	Cache CacheConfig `yaml:"cache"`

	// ShutdownGrace bounds how long streams in flight may finish after SIGTERM; the rest are cut.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`

	LogFormat string `yaml:"log_format"`
	LogLevel  string `yaml:"log_level"`
}

// TLSConfig is the mutual TLS of a TCP listener: the server certificate and key, the CA bundle
// that signs Envoy's client certificates, and optionally the client SANs allowed (empty: any
// certificate of that CA).
type TLSConfig struct {
	Cert       string   `yaml:"cert"`
	Key        string   `yaml:"key"`
	ClientCA   string   `yaml:"client_ca"`
	ClientSANs []string `yaml:"client_sans"`
}

// CacheConfig tunes the answer cache (pkg/answercache).
type CacheConfig struct {
	TTL         time.Duration `yaml:"ttl"`
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	StaleWindow time.Duration `yaml:"stale_window"`
	Size        int           `yaml:"size"`
}

// SecretEnv is the environment variable that may hold the shared secret.
const SecretEnv = "METAPROXY_SHARED_SECRET"

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:               "unix:///run/metaproxy/extproc.sock",
		AdminListen:          "127.0.0.1:9102",
		AllowedPeers:         slices.Clone(listen.DefaultPeers),
		NeutronTimeout:       3 * time.Second,
		NeutronMaxConcurrent: resolve.DefaultNeutronMaxConcurrent,
		Cache:                CacheConfig{TTL: 10 * time.Second, NegativeTTL: 2 * time.Second, StaleWindow: answercache.DefaultStaleWindow, Size: 100000},
		ShutdownGrace:        extproc.DefaultShutdownGrace,
		LogFormat:            "text",
		LogLevel:             "info",
	}
}

// bindFlags declares every option on fs, bound to c.
func bindFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.Listen, "listen", c.Listen, "where Envoy reaches the ext_proc gRPC service: `unix:///path.sock` (created mode 0660, peers checked against --allowed-peers), HOST:PORT (mutual TLS: --tls-*), or systemd (the socket of a .socket unit, kept across restarts)")
	fs.Var((*listFlag)(&c.AllowedPeers), "allowed-peers", "comma-separated `users` (NAME or UID) and groups (group:NAME or group:GID) whose processes may connect to the UNIX socket; every other peer is closed before anything is read")
	fs.StringVar(&c.TLS.Cert, "tls-cert", c.TLS.Cert, "server certificate chain `file` (PEM) for a TCP --listen; re-read when it changes")
	fs.StringVar(&c.TLS.Key, "tls-key", c.TLS.Key, "private key `file` (PEM) of --tls-cert; others must not be able to read it")
	fs.StringVar(&c.TLS.ClientCA, "tls-client-ca", c.TLS.ClientCA, "CA bundle `file` (PEM) that signs Envoy's client certificates; a client without one is refused")
	fs.Var((*listFlag)(&c.TLS.ClientSANs), "tls-client-san", "comma-separated subject alternative `names` (DNS, URI, IP) a client certificate must carry one of (default: any certificate of --tls-client-ca)")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "HTTP `address` for /healthz, /readyz and /metrics (keep it on localhost or a management network); empty disables")
	fs.StringVar(&c.MetadataAgentINI, "metadata-agent-ini", c.MetadataAgentINI, "an existing neutron metadata_agent.ini `file`: its metadata_proxy_shared_secret is used when no other secret is given")
	fs.StringVar(&c.SecretFile, "secret-file", c.SecretFile, "`file` holding nova's metadata_proxy_shared_secret (overrides $"+SecretEnv+" and the ini file)")
	fs.StringVar(&c.PortsFile, "ports-file", c.PortsFile, "resolve from a `file` holding the JSON body of Neutron's GET /v2.0/ports, re-read when it changes (labs, tests)")
	fs.StringVar(&c.OSCloud, "os-cloud", c.OSCloud, "resolve through Neutron with this clouds.yaml `entry` (default: $OS_CLOUD, else the OS_* variables); needs a role that sees every project's ports")
	fs.StringVar(&c.NeutronURL, "neutron-url", c.NeutronURL, "resolve through a Neutron that needs no token (auth_strategy = noauth) at this `URL`, e.g. http://127.0.0.1:9696/")
	fs.DurationVar(&c.NeutronTimeout, "neutron-timeout", c.NeutronTimeout, "bound on one port lookup in Neutron (waiting for a call slot and a Keystone token included); keep it under the listener's ext_proc message_timeout")
	fs.IntVar(&c.NeutronMaxConcurrent, "neutron-max-concurrent", c.NeutronMaxConcurrent, "most Neutron lookups in flight at once, for all VMs together (more wait, within --neutron-timeout); as many idle connections to Neutron are kept")
	fs.BoolVar(&c.Demo, "demo", c.Demo, "resolve from the embedded demo ports (two networks, three VMs; see pkg/resolve/demo) with a demo secret unless one is given, and allow a plain-text TCP --listen; never in production")
	fs.DurationVar(&c.Cache.TTL, "cache-ttl", c.Cache.TTL, "how long a resolved port is trusted before Neutron is asked again")
	fs.DurationVar(&c.Cache.NegativeTTL, "cache-negative-ttl", c.Cache.NegativeTTL, "how long 'no such port' (404) and 'several ports' (500) answers are kept")
	fs.DurationVar(&c.Cache.StaleWindow, "cache-stale-window", c.Cache.StaleWindow, "while Neutron or Keystone is unreachable (not when they refuse the credentials), answers up to this much older than their TTL are still served (0 disables; at most "+answercache.MaxStaleWindow.String()+"; docs/operations.md says what it trades)")
	fs.IntVar(&c.Cache.Size, "cache-size", c.Cache.Size, "maximum cached (network, address) answers; the least recently used go first")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace, "after SIGTERM, how long streams in flight may finish before the rest are cut; keep it below the service manager's stop timeout (systemd TimeoutStopSec, Kubernetes terminationGracePeriodSeconds) less 5s for the last spans")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: `text` or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
}

// Validate returns every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, c.validateListen()...)
	sources := 0
	for _, set := range []bool{c.PortsFile != "", c.OSCloud != "" || c.NeutronURL != "", c.Demo} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		errs = append(errs, errors.New("choose one port source: --ports-file, Neutron (--os-cloud / --neutron-url) or --demo"))
	}
	if c.OSCloud != "" && c.NeutronURL != "" {
		errs = append(errs, errors.New("--os-cloud and --neutron-url both given: use one"))
	}
	if c.NeutronTimeout <= 0 {
		errs = append(errs, errors.New("--neutron-timeout must be positive"))
	}
	if c.Cache.TTL <= 0 || c.Cache.NegativeTTL <= 0 {
		errs = append(errs, errors.New("--cache-ttl and --cache-negative-ttl must be positive"))
	}
	if c.Cache.StaleWindow < 0 || c.Cache.StaleWindow > answercache.MaxStaleWindow {
		errs = append(errs, fmt.Errorf("--cache-stale-window %s: want 0 (off) to %s: an identity older than that must not be signed (docs/operations.md)", c.Cache.StaleWindow, answercache.MaxStaleWindow))
	}
	if c.NeutronMaxConcurrent <= 0 {
		errs = append(errs, errors.New("--neutron-max-concurrent must be positive"))
	}
	if c.Cache.Size <= 0 {
		errs = append(errs, errors.New("--cache-size must be positive"))
	}
	if c.ShutdownGrace <= 0 {
		errs = append(errs, errors.New("--shutdown-grace must be positive"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.LogFormat))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validateListen checks how the listener is protected: a UNIX socket by its mode and
// --allowed-peers, TCP only with all of --tls-cert, --tls-key and --tls-client-ca (or --demo).
func (c Config) validateListen() []error {
	var errs []error
	tlsGiven := c.TLS.Cert != "" || c.TLS.Key != "" || c.TLS.ClientCA != ""
	tlsComplete := c.TLS.Cert != "" && c.TLS.Key != "" && c.TLS.ClientCA != ""
	switch {
	case c.Listen == "":
		errs = append(errs, errors.New("--listen is empty"))
	case listen.IsUnix(c.Listen):
		if tlsGiven || len(c.TLS.ClientSANs) > 0 {
			errs = append(errs, fmt.Errorf("--tls-* given with --listen %s: TLS is for a TCP listener; a UNIX socket is protected by its mode (0660) and --allowed-peers", c.Listen))
		}
	case c.Listen == listen.Systemd:
		// The socket's kind is known once systemd passes it: serve checks it then.
	default:
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("--listen %q: want unix:///path.sock, HOST:PORT or systemd: %v", c.Listen, err))
		} else if !tlsGiven && !c.Demo {
			errs = append(errs, fmt.Errorf("--listen %s is TCP, and ext_proc on TCP is served only with mutual TLS: give --tls-cert, --tls-key and --tls-client-ca (the CA of Envoy's client certificates; cmd/xds --extproc-address %s then sends Envoy there with its client certificate), or listen on a UNIX socket (--listen unix:///run/metaproxy/extproc.sock); only --demo listens on plain TCP", c.Listen, c.Listen))
		}
	}
	if tlsGiven && !tlsComplete {
		errs = append(errs, errors.New("--tls-cert, --tls-key and --tls-client-ca go together: give all three"))
	}
	if len(c.TLS.ClientSANs) > 0 && !tlsGiven {
		errs = append(errs, errors.New("--tls-client-san needs --tls-cert, --tls-key and --tls-client-ca"))
	}
	return errs
}

// listFlag is a comma-separated list flag; setting it replaces the list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	*l = nil
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			*l = append(*l, e)
		}
	}
	return nil
}

// parseArgs builds the configuration from args: defaults < --config file < flags.
func parseArgs(name string, args []string, extra func(*flag.FlagSet), usage func(*flag.FlagSet)) (Config, *flag.FlagSet, error) {
	scratch := DefaultConfig()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var configFile string
	fs.StringVar(&configFile, "config", "", "YAML configuration `file` (keys as in docs/extproc.md); flags override it")
	bindFlags(fs, &scratch)
	if extra != nil {
		extra(fs)
	}
	fs.Usage = func() { usage(fs) }
	if err := fs.Parse(args); err != nil {
		return Config{}, fs, err
	}
	cfg := DefaultConfig()
	if configFile != "" {
		data, err := os.ReadFile(configFile)
		if err != nil {
			return Config{}, fs, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			return Config{}, fs, fmt.Errorf("config %s: %w", configFile, err)
		}
	}
	// Re-apply only the flags given on the command line on top of the file.
	final := flag.NewFlagSet(name, flag.ContinueOnError)
	bindFlags(final, &cfg)
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		if final.Lookup(f.Name) != nil {
			if err := final.Set(f.Name, f.Value.String()); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return cfg, fs, errors.Join(errs...)
}

// loadSecret returns the shared secret: --secret-file, else $METAPROXY_SHARED_SECRET, else the
// metadata_agent.ini value, else "" (the caller decides what that means). The variable is removed
// from the process environment in any case, so that no child process and no later reader of
// os.Environ sees it; /proc/<pid>/environ still shows the environment the process started with
// (the kernel's copy), which is why a file is the better place for the secret. A file others may
// read is refused (package secretfile).
func loadSecret(c Config, fromINI string) ([]byte, string, error) {
	fromEnv, inEnv := os.LookupEnv(SecretEnv)
	if inEnv {
		os.Unsetenv(SecretEnv)
	}
	if c.SecretFile != "" {
		b, err := secretfile.Read(c.SecretFile)
		if err != nil {
			return nil, "", fmt.Errorf("read the shared secret: %w", err)
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return nil, "", fmt.Errorf("the shared secret file %s is empty", c.SecretFile)
		}
		return []byte(s), "file " + c.SecretFile, nil
	}
	if fromEnv != "" {
		return []byte(fromEnv), "$" + SecretEnv + " (removed from the environment)", nil
	}
	if fromINI != "" {
		// The ini file is then a secret file too (neutron installs it root:neutron 0640).
		if err := secretfile.Check(c.MetadataAgentINI); err != nil {
			return nil, "", fmt.Errorf("metadata_proxy_shared_secret of --metadata-agent-ini: %w", err)
		}
		return []byte(fromINI), "metadata_proxy_shared_secret in " + c.MetadataAgentINI, nil
	}
	return nil, "", nil
}
