// Package agentini reads the settings metaproxy shares with neutron-metadata-agent from an existing
// neutron metadata_agent.ini, so an operator can migrate without retyping: the shared secret, how to
// reach nova's metadata API, the per-IP rate limit and the haproxy timeouts.
//
// Option names and defaults follow neutron/conf/agent/metadata/config.py and the haproxy template of
// neutron/agent/metadata/driver.py.
package agentini

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/ini.v1"
)

// Settings is what metaproxy takes from metadata_agent.ini.
type Settings struct {
	// SharedSecret is metadata_proxy_shared_secret. Empty when the file does not set it.
	SharedSecret string
	Nova         Nova
	RateLimit    RateLimit
	Haproxy      Timeouts
}

// Nova says how to reach nova's metadata API ([DEFAULT] nova_metadata_*).
type Nova struct {
	Host       string // nova_metadata_host; may be a comma-separated list
	Port       int    // nova_metadata_port
	Protocol   string // nova_metadata_protocol: http or https
	Insecure   bool   // nova_metadata_insecure: do not verify nova's certificate
	ClientCert string // nova_client_cert
	ClientKey  string // nova_client_priv_key
	CACert     string // auth_ca_cert
}

// RateLimit is [metadata_rate_limiting]: haproxy answers 429 per source IP.
type RateLimit struct {
	Enabled             bool
	IPVersions          []int
	BaseWindow          time.Duration
	BaseQueryRateLimit  int
	BurstWindow         time.Duration
	BurstQueryRateLimit int
}

// Timeouts are the timeouts of neutron's metadata haproxy ([metadata_haproxy] where the release has
// that section; otherwise the values hard-coded in its template).
type Timeouts struct {
	HTTPRequest   time.Duration
	Connect       time.Duration
	Client        time.Duration
	Server        time.Duration
	HTTPKeepAlive time.Duration
}

// Default returns neutron's defaults.
func Default() Settings {
	return Settings{
		Nova: Nova{Host: "127.0.0.1", Port: 8775, Protocol: "http"},
		RateLimit: RateLimit{
			IPVersions: []int{4}, BaseWindow: 10 * time.Second, BaseQueryRateLimit: 10,
			BurstWindow: 10 * time.Second, BurstQueryRateLimit: 10,
		},
		Haproxy: Timeouts{
			HTTPRequest: 30 * time.Second, Connect: 30 * time.Second, Client: 32 * time.Second,
			Server: 32 * time.Second, HTTPKeepAlive: 30 * time.Second,
		},
	}
}

// Load reads path on top of Default. Every malformed value is reported, all at once.
func Load(path string) (Settings, error) {
	f, err := ini.LoadSources(ini.LoadOptions{AllowBooleanKeys: true, IgnoreInlineComment: true}, path)
	if err != nil {
		return Settings{}, fmt.Errorf("read metadata agent config %s: %w", path, err)
	}
	s := Default()
	var errs []error
	p := parser{errs: &errs}
	def := f.Section(ini.DefaultSection)

	// Value, not String: the secret is taken verbatim, with no %(name)s interpolation.
	s.SharedSecret = def.Key("metadata_proxy_shared_secret").Value()
	p.str(def, "nova_metadata_host", &s.Nova.Host)
	p.int(def, "nova_metadata_port", &s.Nova.Port)
	p.str(def, "nova_metadata_protocol", &s.Nova.Protocol)
	p.bool(def, "nova_metadata_insecure", &s.Nova.Insecure)
	p.str(def, "nova_client_cert", &s.Nova.ClientCert)
	p.str(def, "nova_client_priv_key", &s.Nova.ClientKey)
	p.str(def, "auth_ca_cert", &s.Nova.CACert)
	if s.Nova.Protocol != "http" && s.Nova.Protocol != "https" {
		errs = append(errs, fmt.Errorf("nova_metadata_protocol = %q: want http or https", s.Nova.Protocol))
	}

	rl := f.Section("metadata_rate_limiting")
	p.bool(rl, "rate_limit_enabled", &s.RateLimit.Enabled)
	p.seconds(rl, "base_window_duration", &s.RateLimit.BaseWindow)
	p.int(rl, "base_query_rate_limit", &s.RateLimit.BaseQueryRateLimit)
	p.seconds(rl, "burst_window_duration", &s.RateLimit.BurstWindow)
	p.int(rl, "burst_query_rate_limit", &s.RateLimit.BurstQueryRateLimit)
	if rl.HasKey("ip_versions") {
		s.RateLimit.IPVersions = nil
		for _, v := range strings.Split(rl.Key("ip_versions").String(), ",") {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || (n != 4 && n != 6) {
				errs = append(errs, fmt.Errorf("[metadata_rate_limiting] ip_versions: %q is not 4 or 6", v))
				continue
			}
			s.RateLimit.IPVersions = append(s.RateLimit.IPVersions, n)
		}
	}

	hp := f.Section("metadata_haproxy")
	p.seconds(hp, "timeout_http_request", &s.Haproxy.HTTPRequest)
	p.seconds(hp, "timeout_connect", &s.Haproxy.Connect)
	p.seconds(hp, "timeout_client", &s.Haproxy.Client)
	p.seconds(hp, "timeout_server", &s.Haproxy.Server)
	p.seconds(hp, "timeout_http_keep_alive", &s.Haproxy.HTTPKeepAlive)

	if err := errors.Join(errs...); err != nil {
		return Settings{}, fmt.Errorf("metadata agent config %s: %w", path, err)
	}
	return s, nil
}

// parser reads typed keys, collecting every error instead of stopping at the first.
type parser struct{ errs *[]error }

func (p parser) fail(sec *ini.Section, key string, err error) {
	*p.errs = append(*p.errs, fmt.Errorf("[%s] %s: %w", sec.Name(), key, err))
}

func (p parser) str(sec *ini.Section, key string, dst *string) {
	if sec.HasKey(key) {
		*dst = strings.TrimSpace(sec.Key(key).String())
	}
}

func (p parser) int(sec *ini.Section, key string, dst *int) {
	if !sec.HasKey(key) {
		return
	}
	v, err := sec.Key(key).Int()
	if err != nil || v < 0 {
		p.fail(sec, key, fmt.Errorf("%q is not a non-negative integer", sec.Key(key).String()))
		return
	}
	*dst = v
}

func (p parser) bool(sec *ini.Section, key string, dst *bool) {
	if !sec.HasKey(key) {
		return
	}
	v, err := sec.Key(key).Bool()
	if err != nil {
		p.fail(sec, key, fmt.Errorf("%q is not a boolean", sec.Key(key).String()))
		return
	}
	*dst = v
}

// seconds reads an oslo integer of seconds, or a haproxy-style duration such as "30s".
func (p parser) seconds(sec *ini.Section, key string, dst *time.Duration) {
	if !sec.HasKey(key) {
		return
	}
	raw := strings.TrimSpace(sec.Key(key).String())
	if n, err := strconv.Atoi(raw); err == nil && n >= 0 {
		*dst = time.Duration(n) * time.Second
		return
	}
	if d, err := time.ParseDuration(raw); err == nil && d >= 0 {
		*dst = d
		return
	}
	p.fail(sec, key, fmt.Errorf("%q is not a number of seconds", raw))
}
