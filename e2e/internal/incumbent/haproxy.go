//go:build e2e

// Package incumbent describes the incumbent metadata front for the e2e suite and the benchmarks:
// haproxy configured with neutron's own template (neutron/agent/metadata/driver.py, neutron 21.0.0)
// in front of neutron-metadata-agent's UNIX socket.
package incumbent

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// MetadataIPv4 is the address neutron's haproxy binds in a qdhcp namespace.
const MetadataIPv4 = "169.254.169.254"

// Config fills neutron's haproxy template.
type Config struct {
	// NetworkID makes haproxy set X-Neutron-Network-ID (and delete X-Neutron-Router-ID), as the
	// DHCP agent's proxy does. Exactly one of NetworkID and RouterID is required.
	NetworkID string
	// RouterID makes haproxy set X-Neutron-Router-ID (and delete X-Neutron-Network-ID), as the L3
	// agent's proxy does.
	RouterID string
	// AgentSocket is neutron-metadata-agent's UNIX socket (metadata_proxy_socket). Required.
	AgentSocket string
	// Host and Port are what haproxy binds. Empty/zero: 169.254.169.254:80.
	Host string
	Port int
	// HostV6 and BindInterface, both set, add neutron's IPv6 bind line
	// (`bind fe80::a9fe:a9fe:80 interface tapXXX`).
	HostV6, BindInterface string
	// User and Group are the names haproxy drops privileges to after binding. Empty: the names of
	// this process's effective user and group, as neutron does when metadata_proxy_user/group are
	// unset (the agent's own).
	User, Group string
	// PidFile is the template's pidfile (neutron: <state_path>/external/pids/<id>.pid.haproxy).
	// Empty: none is written.
	PidFile string
	// Log is the log target. Empty: neutron's "/dev/log". "stdout format raw" puts one line per
	// request (option httplog) on haproxy's standard output when it runs in the foreground (-db).
	Log string
	// LogLevel is neutron's log level: "info" (default) or "debug".
	LogLevel string
}

// Render returns the haproxy configuration neutron would write for c. It keeps the template's
// `daemon`: run haproxy with -db to keep it in the foreground (a test then owns its pid).
func (c Config) Render() (string, error) {
	if (c.NetworkID == "") == (c.RouterID == "") {
		return "", errors.New("incumbent: exactly one of NetworkID and RouterID is required")
	}
	if c.AgentSocket == "" {
		return "", errors.New("incumbent: AgentSocket is required")
	}
	if c.Host == "" {
		c.Host = MetadataIPv4
	}
	if c.Port == 0 {
		c.Port = 80
	}
	if c.Log == "" {
		c.Log = "/dev/log"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.User == "" {
		u, err := user.LookupId(strconv.Itoa(os.Geteuid()))
		if err != nil {
			return "", fmt.Errorf("incumbent: user: %w", err)
		}
		c.User = u.Username
	}
	if c.Group == "" {
		g, err := user.LookupGroupId(strconv.Itoa(os.Getegid()))
		if err != nil {
			return "", fmt.Errorf("incumbent: group: %w", err)
		}
		c.Group = g.Name
	}
	resType, resTypeDel, resID := "Network", "Router", c.NetworkID
	if c.RouterID != "" {
		resType, resTypeDel, resID = "Router", "Network", c.RouterID
	}
	id := c.NetworkID + c.RouterID
	var b strings.Builder
	// The lines below follow neutron's _HAPROXY_CONFIG_TEMPLATE line for line.
	fmt.Fprintf(&b, "\nglobal\n")
	fmt.Fprintf(&b, "    log         %s local0 %s\n", c.Log, c.LogLevel)
	fmt.Fprintf(&b, "    log-tag     haproxy-metadata-proxy-%s\n", id)
	fmt.Fprintf(&b, "    user        %s\n", c.User)
	fmt.Fprintf(&b, "    group       %s\n", c.Group)
	fmt.Fprintf(&b, "    maxconn     1024\n")
	if c.PidFile != "" {
		fmt.Fprintf(&b, "    pidfile     %s\n", c.PidFile)
	}
	fmt.Fprintf(&b, "    daemon\n\n")
	b.WriteString(`defaults
    log global
    mode http
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
`)
	fmt.Fprintf(&b, "    bind %s:%d\n", c.Host, c.Port)
	if c.HostV6 != "" && c.BindInterface != "" {
		fmt.Fprintf(&b, "    bind %s:%d interface %s\n", c.HostV6, c.Port, c.BindInterface)
	}
	fmt.Fprintf(&b, "    server metadata %s\n", c.AgentSocket)
	fmt.Fprintf(&b, "    http-request del-header X-Neutron-%s-ID\n", resTypeDel)
	fmt.Fprintf(&b, "    http-request set-header X-Neutron-%s-ID %s\n", resType, resID)
	return b.String(), nil
}
