package chassiscmd

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/metaproxy/metaproxy/pkg/agentini"
	"github.com/metaproxy/metaproxy/pkg/ovnmeta"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
)

// Config is everything `xds chassis` can be told. The OVS and Southbound connections come from
// the flags, else from neutron_ovn_metadata_agent.ini (--ovn-metadata-agent-ini), else from the
// chassis itself (the local Open_vSwitch socket; ovn-controller's external_ids:ovn-remote).
type Config struct {
	AdminListen string

	NeutronURL     string
	OSCloud        string
	NeutronTimeout time.Duration

	OVNMetadataAgentINI string
	OVSDB               string
	SB                  SBFlags

	Host    string
	Chassis string
	Bridge  string

	NetnsDir       string
	Iptables       string
	Interval       time.Duration
	ReportInterval time.Duration
	Report         bool

	LogFormat string
	LogLevel  string
}

// SBFlags are the Southbound connection and its TLS files.
type SBFlags struct {
	Connection, PrivateKey, Certificate, CACert string
}

func newFlagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("xds chassis", flag.ContinueOnError)
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:9104", "`HOST:PORT` serving /healthz, /readyz and /metrics (empty: off)")
	fs.StringVar(&c.NeutronURL, "neutron-url", "", "noauth Neutron endpoint `URL`, e.g. http://127.0.0.1:9696/ (skips Keystone)")
	fs.StringVar(&c.OSCloud, "os-cloud", "", "clouds.yaml entry `NAME` for Neutron (default: OS_CLOUD, then the OS_* variables); the user must see every project's ports")
	fs.DurationVar(&c.NeutronTimeout, "neutron-timeout", 20*time.Second, "bound on one pass's Neutron requests together")
	fs.StringVar(&c.OVNMetadataAgentINI, "ovn-metadata-agent-ini", "", "neutron_ovn_metadata_agent.ini `FILE` to read [ovs] ovsdb_connection and [ovn] ovn_sb_* from (flags override it)")
	fs.StringVar(&c.OVSDB, "ovsdb-connection", "", "the local Open_vSwitch database (default: ovs-vsctl's, unix:/var/run/openvswitch/db.sock)")
	fs.StringVar(&c.SB.Connection, "ovn-sb-connection", "", "the OVN Southbound database, e.g. ssl:10.0.0.10:6642 (default: Open_vSwitch external_ids:ovn-remote, as ovn-controller uses)")
	fs.StringVar(&c.SB.PrivateKey, "ovn-sb-private-key", "", "client private key `FILE` for an ssl: Southbound connection")
	fs.StringVar(&c.SB.Certificate, "ovn-sb-certificate", "", "client certificate `FILE` for an ssl: Southbound connection")
	fs.StringVar(&c.SB.CACert, "ovn-sb-ca-cert", "", "CA certificate `FILE` for an ssl: Southbound connection")
	fs.StringVar(&c.Host, "host", "", "the name Neutron binds this chassis's ports to (binding:host_id; default: Open_vSwitch external_ids:hostname, else the host name)")
	fs.StringVar(&c.Chassis, "chassis", "", "the OVN chassis name (default: Open_vSwitch external_ids:system-id)")
	fs.StringVar(&c.Bridge, "ovn-bridge", "", "the integration bridge metadata ports are plugged into (default: Open_vSwitch external_ids:ovn-bridge, else br-int)")
	fs.StringVar(&c.NetnsDir, "netns-dir", "/var/run/netns", "`DIR` of the named network namespaces (where ovnmeta-<network> is made; cmd/xds --netns-dir must be the same)")
	fs.StringVar(&c.Iptables, "iptables", "iptables", "the iptables `PROGRAM` (for the checksum-fill rule on a netdev datapath)")
	fs.DurationVar(&c.Interval, "interval", 10*time.Second, "how often Neutron is asked which networks have VM ports here; a new VM's namespace appears within one interval")
	fs.DurationVar(&c.ReportInterval, "report-interval", 10*time.Second, "how often SB_Global nb_cfg is checked and copied to Chassis_Private (Neutron's agent_down_time is 75s by default)")
	fs.BoolVar(&c.Report, "report", true, "report as the chassis's OVN Metadata agent in the Southbound database (openstack network agent list)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	return fs
}

// Validate returns every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			bad("--admin-listen %q: %v", c.AdminListen, err)
		}
	}
	if c.NeutronURL != "" && c.OSCloud != "" {
		bad("--neutron-url and --os-cloud are exclusive")
	}
	if c.NeutronTimeout <= 0 {
		bad("--neutron-timeout must be positive")
	}
	if c.Interval < time.Second {
		bad("--interval %v: want at least 1s", c.Interval)
	}
	if c.Report && c.ReportInterval < time.Second {
		bad("--report-interval %v: want at least 1s", c.ReportInterval)
	}
	if c.NetnsDir == "" || !strings.HasPrefix(c.NetnsDir, "/") {
		bad("--netns-dir %q: want an absolute directory", c.NetnsDir)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("--log-format %q: want text or json", c.LogFormat)
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		bad("--log-level: %v", err)
	}
	return errors.Join(errs...)
}

// applyINI fills the connections the flags left empty from the OVN metadata agent's ini file.
func (c *Config) applyINI() error {
	if c.OVNMetadataAgentINI == "" {
		return nil
	}
	ini, err := agentini.LoadOVN(c.OVNMetadataAgentINI)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		dst *string
		v   string
	}{{&c.OVSDB, ini.OVSDB}, {&c.SB.Connection, ini.SB},
		{&c.SB.PrivateKey, ini.SBPrivateKey}, {&c.SB.Certificate, ini.SBCertificate}, {&c.SB.CACert, ini.SBCACert}} {
		if *f.dst == "" {
			*f.dst = f.v
		}
	}
	return nil
}

// description is what the chassis writes as its agent's description in Neutron.
func description(version string) string {
	return "metaproxy (xds chassis " + version + "; namespaces " + ovnmeta.NamespacePrefix + "<network>, served by Envoy)"
}
