package translate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Settings are the node-independent inputs of the translation: where nova and cmd/extproc are and
// how requests are timed and rate limited. DefaultSettings holds neutron's defaults.
type Settings struct {
	Nova      Nova
	ExtProc   ExtProc
	Timeouts  Timeouts
	RateLimit RateLimit
	// EnvoyTracing turns on Envoy's OpenTelemetry tracing (off by default).
	EnvoyTracing EnvoyTracing
}

// Nova says how Envoy reaches nova's metadata API (metadata_agent.ini nova_metadata_*).
type Nova struct {
	// Hosts are host names or IP addresses, all on Port (nova_metadata_host, comma-separated).
	Hosts []string
	Port  int
	// Protocol is "http" or "https" (nova_metadata_protocol).
	Protocol string
	// CACert verifies nova's certificate (auth_ca_cert); empty means the system roots.
	CACert string
	// ClientCert and ClientKey are presented to nova (nova_client_cert, nova_client_priv_key).
	ClientCert, ClientKey string
	// Insecure skips verifying nova's certificate (nova_metadata_insecure).
	Insecure bool
}

// ExtProc says how Envoy reaches cmd/extproc.
type ExtProc struct {
	// Address is unix:///path/to.sock or HOST:PORT.
	Address string
	// MessageTimeout bounds each ext_proc answer. cmd/extproc may need a Neutron round trip on a
	// cache miss, so Envoy's 200 ms default is too short.
	MessageTimeout time.Duration
	// TLS is how Envoy reaches a TCP Address: mutual TLS (cmd/extproc serves TCP only so).
	// ServerName defaults to the address's host. Unused for a UNIX socket.
	TLS EnvoyTLS
	// Plaintext sends Envoy to a TCP Address without TLS: only for a lab's `extproc --demo`.
	Plaintext bool
}

// Timeouts mirror neutron's [metadata_haproxy] timeouts.
type Timeouts struct {
	// HTTPRequest bounds receiving the whole request (timeout http-request) -> HCM request_timeout.
	HTTPRequest time.Duration
	// Connect bounds connecting to nova (timeout connect) -> cluster connect_timeout.
	Connect time.Duration
	// Client bounds client inactivity (timeout client) -> HCM stream_idle_timeout.
	Client time.Duration
	// Server bounds waiting for nova (timeout server) -> route timeout.
	Server time.Duration
	// KeepAlive bounds an idle keep-alive connection (timeout http-keep-alive) -> HCM idle_timeout.
	KeepAlive time.Duration
}

// RateLimit mirrors neutron's [metadata_rate_limiting]: a source IP that sent more than
// BaseQueryRateLimit requests in BaseWindow, or more than BurstQueryRateLimit in BurstWindow, gets
// 429. It applies only to listeners of the IP versions in IPVersions.
type RateLimit struct {
	Enabled             bool
	IPVersions          []int
	BaseWindow          time.Duration
	BaseQueryRateLimit  int
	BurstWindow         time.Duration
	BurstQueryRateLimit int
}

// DefaultSettings returns neutron's defaults: nova on http://127.0.0.1:8775, cmd/extproc on
// unix:///run/metaproxy/extproc.sock with a 5 s message timeout, haproxy's 30/30/32/32/30 s
// timeouts, rate limiting off (10 requests per 10 s when enabled, IPv4).
func DefaultSettings() Settings {
	return Settings{
		Nova:    Nova{Hosts: []string{"127.0.0.1"}, Port: 8775, Protocol: "http"},
		ExtProc: ExtProc{Address: "unix:///run/metaproxy/extproc.sock", MessageTimeout: 5 * time.Second, TLS: EnvoyTLS{SDSDir: DefaultSDSDir}},
		Timeouts: Timeouts{
			HTTPRequest: 30 * time.Second, Connect: 30 * time.Second, Client: 32 * time.Second,
			Server: 32 * time.Second, KeepAlive: 30 * time.Second,
		},
		RateLimit: RateLimit{
			IPVersions: []int{4}, BaseWindow: 10 * time.Second, BaseQueryRateLimit: 10,
			BurstWindow: 10 * time.Second, BurstQueryRateLimit: 10,
		},
	}
}

// SplitHosts splits a comma-separated nova_metadata_host value, dropping blanks.
func SplitHosts(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// Validate returns every problem of s at once.
func (s Settings) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(s.Nova.Hosts) == 0 {
		bad("nova: no host")
	}
	for _, h := range s.Nova.Hosts {
		if h == "" || strings.ContainsAny(h, " /:[]") && !isIP(h) {
			bad("nova: host %q is not a host name or IP address", h)
		}
	}
	if s.Nova.Port < 1 || s.Nova.Port > 65535 {
		bad("nova: port %d out of range", s.Nova.Port)
	}
	switch s.Nova.Protocol {
	case "http":
		if s.Nova.CACert != "" || s.Nova.ClientCert != "" || s.Nova.ClientKey != "" {
			bad("nova: CA or client certificate given but protocol is http")
		}
	case "https":
		if (s.Nova.ClientCert == "") != (s.Nova.ClientKey == "") {
			bad("nova: client certificate and key must be given together")
		}
	default:
		bad("nova: protocol %q: want http or https", s.Nova.Protocol)
	}
	if t, err := parseExtProcAddress(s.ExtProc.Address); err != nil {
		bad("extproc: %v", err)
	} else if t.unixPath == "" && !s.ExtProc.Plaintext {
		if err := s.ExtProc.tls(t).validate(); err != nil {
			bad("extproc: TLS to %s: %v", s.ExtProc.Address, err)
		}
	}
	if s.ExtProc.MessageTimeout <= 0 {
		bad("extproc: message timeout must be positive")
	}
	for name, d := range map[string]time.Duration{
		"http-request": s.Timeouts.HTTPRequest, "connect": s.Timeouts.Connect, "client": s.Timeouts.Client,
		"server": s.Timeouts.Server, "http-keep-alive": s.Timeouts.KeepAlive,
	} {
		if d <= 0 {
			bad("timeout %s must be positive", name)
		}
	}
	if rl := s.RateLimit; rl.Enabled {
		if len(rl.IPVersions) == 0 {
			bad("rate limit: no IP version")
		}
		for _, v := range rl.IPVersions {
			if v != 4 && v != 6 {
				bad("rate limit: IP version %d: want 4 or 6", v)
			}
		}
		if rl.BaseWindow < time.Second || rl.BurstWindow < time.Second {
			bad("rate limit: windows must be at least 1s")
		}
		if rl.BaseQueryRateLimit < 1 || rl.BurstQueryRateLimit < 1 {
			bad("rate limit: query limits must be at least 1")
		}
	}
	if err := s.EnvoyTracing.validate(); err != nil {
		bad("%v", err)
	}
	return errors.Join(errs...)
}

func isIP(h string) bool {
	_, err := netip.ParseAddr(h)
	return err == nil
}

// extProcTarget is a parsed ExtProc.Address: a UNIX socket path or a host and port.
type extProcTarget struct {
	unixPath string
	host     string
	port     uint32
}

func parseExtProcAddress(addr string) (extProcTarget, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !strings.HasPrefix(path, "/") {
			return extProcTarget{}, fmt.Errorf("address %q: want unix:///absolute/path", addr)
		}
		return extProcTarget{unixPath: path}, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return extProcTarget{}, fmt.Errorf("address %q: want unix:///path or HOST:PORT: %w", addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || host == "" {
		return extProcTarget{}, fmt.Errorf("address %q: want unix:///path or HOST:PORT", addr)
	}
	return extProcTarget{host: host, port: uint32(p)}, nil
}
