package extproccmd

import (
	"errors"
	"flag"
	"fmt"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is cmd/extproc's configuration: defaults, then the YAML file given with --config, then
// flags (flags win). The shared secret is never a flag value: see SecretFile.
type Config struct {
	Listen      string `yaml:"listen"`
	AdminListen string `yaml:"admin_listen"`

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
	Demo           bool          `yaml:"-"`

	Cache CacheConfig `yaml:"cache"`

	LogFormat string `yaml:"log_format"`
	LogLevel  string `yaml:"log_level"`
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
		Listen:         "unix:///run/metaproxy/extproc.sock",
		AdminListen:    "127.0.0.1:9102",
		NeutronTimeout: 3 * time.Second,
		Cache:          CacheConfig{TTL: 10 * time.Second, NegativeTTL: 2 * time.Second, StaleWindow: 5 * time.Minute, Size: 100000},
		LogFormat:      "text",
		LogLevel:       "info",
	}
}

// bindFlags declares every option on fs, bound to c.
func bindFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.Listen, "listen", c.Listen, "where Envoy reaches the ext_proc gRPC service: `unix:///path.sock` (made mode 0660), HOST:PORT, or systemd (the socket of a .socket unit, kept across restarts)")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "HTTP `address` for /healthz, /readyz and /metrics (keep it on localhost or a management network); empty disables")
	fs.StringVar(&c.MetadataAgentINI, "metadata-agent-ini", c.MetadataAgentINI, "an existing neutron metadata_agent.ini `file`: its metadata_proxy_shared_secret is used when no other secret is given")
	fs.StringVar(&c.SecretFile, "secret-file", c.SecretFile, "`file` holding nova's metadata_proxy_shared_secret (overrides $"+SecretEnv+" and the ini file)")
	fs.StringVar(&c.PortsFile, "ports-file", c.PortsFile, "resolve from a `file` holding the JSON body of Neutron's GET /v2.0/ports, re-read when it changes (labs, tests)")
	fs.StringVar(&c.OSCloud, "os-cloud", c.OSCloud, "resolve through Neutron with this clouds.yaml `entry` (default: $OS_CLOUD, else the OS_* variables); needs a role that sees every project's ports")
	fs.StringVar(&c.NeutronURL, "neutron-url", c.NeutronURL, "resolve through a Neutron that needs no token (auth_strategy = noauth) at this `URL`, e.g. http://127.0.0.1:9696/")
	fs.DurationVar(&c.NeutronTimeout, "neutron-timeout", c.NeutronTimeout, "bound on one port lookup in Neutron; keep it under the listener's ext_proc message_timeout")
	fs.BoolVar(&c.Demo, "demo", c.Demo, "resolve from the embedded demo ports (two networks, three VMs; see pkg/resolve/demo) with a demo secret unless one is given; never in production")
	fs.DurationVar(&c.Cache.TTL, "cache-ttl", c.Cache.TTL, "how long a resolved port is trusted before Neutron is asked again")
	fs.DurationVar(&c.Cache.NegativeTTL, "cache-negative-ttl", c.Cache.NegativeTTL, "how long 'no such port' (404) and 'several ports' (500) answers are kept")
	fs.DurationVar(&c.Cache.StaleWindow, "cache-stale-window", c.Cache.StaleWindow, "while Neutron is unreachable, answers up to this much older than their TTL are still served (0 disables)")
	fs.IntVar(&c.Cache.Size, "cache-size", c.Cache.Size, "maximum cached (network, address) answers; the least recently used go first")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: `text` or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
}

// Validate returns every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("--listen is empty"))
	}
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
	if c.Cache.StaleWindow < 0 {
		errs = append(errs, errors.New("--cache-stale-window must not be negative"))
	}
	if c.Cache.Size <= 0 {
		errs = append(errs, errors.New("--cache-size must be positive"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.LogFormat))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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
// metadata_agent.ini value, else "" (the caller decides what that means).
func loadSecret(c Config, fromINI string) ([]byte, string, error) {
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return nil, "", fmt.Errorf("read the shared secret: %w", err)
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return nil, "", fmt.Errorf("the shared secret file %s is empty", c.SecretFile)
		}
		return []byte(s), "file " + c.SecretFile, nil
	}
	if s := os.Getenv(SecretEnv); s != "" {
		return []byte(s), "$" + SecretEnv, nil
	}
	if fromINI != "" {
		return []byte(fromINI), "metadata_proxy_shared_secret in " + c.MetadataAgentINI, nil
	}
	return nil, "", nil
}
