//go:build e2e

package openstack

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"text/template"
)

//go:embed scripts/*.py
var scripts embed.FS

// script is the path of an embedded helper script, written under BaseDir/scripts by writeConfigs.
func (c *Cloud) script(name string) string { return c.path("scripts/" + name) }

// scriptText returns an embedded script's text (the go:embed pattern guarantees it exists).
func scriptText(name string) []byte {
	b, _ := scripts.ReadFile("scripts/" + name)
	return b
}

var neutronConf = template.Must(template.New("neutron.conf").Parse(`[DEFAULT]
core_plugin = ml2
{{- if .OVN}}
# ML2/OVN needs its L3 plugin (without one its maintenance worker fails on floating IPs).
service_plugins = ovn-router
dhcp_agent_notification = false
agent_down_time = {{.OVN.AgentDownSeconds}}
{{- else}}
# The L3 plugin runs on sqlite without agents: routers and router interface ports for router mode.
service_plugins = router
{{- end}}
auth_strategy = {{.Auth}}
transport_url = {{.Transport}}
bind_host = 127.0.0.1
bind_port = {{.NeutronPort}}
api_paste_config = /etc/neutron/api-paste.ini
state_path = {{.Base}}/neutron/state
# One API worker: a fresh worker answers GET /v2.0/ports with 500 until warmed up (see waitHTTP).
api_workers = 1
rpc_workers = {{if .OVN}}0{{else}}1{{end}}
rpc_state_report_workers = 0
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
{{- if .Keystone}}
use_ssl = true
[ssl]
cert_file = {{.CertFile}}
key_file = {{.KeyFile}}
[keystone_authtoken]
# keystonemiddleware validates every token with Keystone as the neutron service user, and caches
# the answer in process (no memcached) for token_cache_time (300 s).
www_authenticate_uri = {{.KeystoneURL}}
auth_url = {{.KeystoneURL}}
auth_type = password
username = neutron
password = {{.ServicePassword}}
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = {{.Region}}
cafile = {{.CAFile}}
{{- end}}
[database]
# Several processes write (API, RPC and periodic workers): wait for sqlite's lock instead of failing
# with "database is locked" (the file is in WAL mode, see scripts/neutron_schema.py).
connection = sqlite:///{{.Base}}/neutron/neutron.sqlite?timeout=60
sqlite_synchronous = false
[oslo_concurrency]
lock_path = {{.Base}}/neutron/lock
{{- if .OVN}}
[ml2]
type_drivers = geneve,flat
tenant_network_types = geneve
mechanism_drivers = ovn
extension_drivers = port_security
overlay_ip_version = 4
[ml2_type_geneve]
vni_ranges = 1:65536
max_header_size = 38
[ml2_type_flat]
flat_networks = *
[ovn]
ovn_nb_connection = {{.OVN.NB}}
ovn_sb_connection = {{.OVN.SB}}
ovn_metadata_enabled = True
neutron_sync_mode = off
{{- else}}
[ml2]
type_drivers = local,flat
tenant_network_types = local
mechanism_drivers =
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
{{- end}}
`))

var novaConf = template.Must(template.New("nova.conf").Parse(`[DEFAULT]
transport_url = fake:/
state_path = {{.Base}}/nova/state
enabled_apis = metadata
metadata_listen = 127.0.0.1
metadata_listen_port = {{.NovaPort}}
metadata_workers = 1
[api]
local_metadata_per_cell = true
metadata_cache_expiration = {{.NovaCacheSeconds}}
dhcp_domain = {{.DHCPDomain}}
[api_database]
connection = sqlite:///{{.Base}}/nova/nova_api.sqlite?timeout=60
sqlite_synchronous = false
[database]
connection = sqlite:///{{.Base}}/nova/nova.sqlite?timeout=60
sqlite_synchronous = false
[neutron]
service_metadata_proxy = true
metadata_proxy_shared_secret = {{.Secret}}
{{- if .Keystone}}
# Nova builds metadata with Neutron calls made as its own service user, as in a real cloud.
auth_type = password
auth_url = {{.KeystoneURL}}
username = nova
password = {{.ServicePassword}}
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = {{.Region}}
cafile = {{.CAFile}}
endpoint_override = https://127.0.0.1:{{.NeutronPort}}
{{- else}}
auth_type = none
endpoint_override = http://127.0.0.1:{{.NeutronPort}}
{{- end}}
[oslo_concurrency]
lock_path = {{.Base}}/nova/lock
[wsgi]
api_paste_config = /etc/nova/api-paste.ini
`))

var agentINI = template.Must(template.New("metadata_agent.ini").Parse(`[DEFAULT]
state_path = {{.Base}}/mdagent
metadata_proxy_socket = {{.Base}}/mdagent/metadata_proxy
nova_metadata_host = 127.0.0.1
nova_metadata_port = {{.NovaPort}}
nova_metadata_protocol = http
metadata_proxy_shared_secret = {{.Secret}}
metadata_workers = 1
transport_url = {{.Transport}}
[agent]
# One state report at start (it also warms neutron-server's RPC worker, which otherwise answers
# get_ports with "Port has no attribute port_forwardings"), then none for an hour: the reports are
# the only writes the RPC worker makes, and on sqlite they collide with the API worker's
# ("database is locked" -> 500 on POST /v2.0/subnets).
report_interval = 3600
[cache]
enabled = true
backend = oslo_cache.dict
expiration_time = 5
`))

// writeConfigs writes neutron.conf, nova.conf, metadata_agent.ini, keystone.conf (AuthKeystone),
// RabbitMQ's files and the helper scripts under BaseDir. Files holding secrets are mode 0600.
func (c *Cloud) writeConfigs() error {
	transport := "fake:/"
	if c.opts.WithAgent {
		transport = fmt.Sprintf("rabbit://guest:guest@127.0.0.1:%d/", c.rabbitPorts[0])
	}
	data := map[string]any{
		"Base":             c.base,
		"Transport":        transport,
		"NeutronPort":      c.neutronPort,
		"NovaPort":         c.novaPort,
		"NovaCacheSeconds": int(c.opts.NovaCacheExpiration.Round(1e9).Seconds()),
		"DHCPDomain":       DHCPDomain,
		"Secret":           c.opts.SharedSecret,
		"OVN":              c.opts.OVN,
		"Auth":             string(c.opts.Auth),
		"Keystone":         c.opts.Auth == AuthKeystone,
		"Region":           Region,
		"ServicePassword":  serviceUserPassword,
		"TokenExpiration":  int(c.opts.TokenExpiration.Round(1e9).Seconds()),
	}
	tmpls := map[string]*template.Template{
		"neutron/neutron.conf":       neutronConf,
		"nova/nova.conf":             novaConf,
		"mdagent/metadata_agent.ini": agentINI,
	}
	if c.opts.Auth == AuthKeystone {
		data["KeystoneURL"], data["CAFile"], data["CertFile"], data["KeyFile"] = c.KeystoneURL(), c.ca.caFile, c.ca.certFile, c.ca.keyFile
		tmpls["keystone/keystone.conf"] = keystoneConf
	}
	for path, tmpl := range tmpls {
		f, err := os.OpenFile(c.path(path), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("openstack: write %s: %w", path, err)
		}
		err = tmpl.Execute(f, data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("openstack: write %s: %w", path, err)
		}
	}
	files := map[string]string{
		"rabbit/enabled_plugins": "[].\n",
		"rabbit/rabbitmq.conf":   "loopback_users = none\n",
	}
	entries, err := scripts.ReadDir("scripts")
	if err != nil {
		return fmt.Errorf("openstack: embedded scripts: %w", err)
	}
	for _, e := range entries {
		b, err := scripts.ReadFile("scripts/" + e.Name())
		if err != nil {
			return fmt.Errorf("openstack: embedded scripts: %w", err)
		}
		files["scripts/"+e.Name()] = string(b)
	}
	for rel, body := range files {
		if err := os.MkdirAll(filepath.Dir(c.path(rel)), 0o755); err != nil {
			return fmt.Errorf("openstack: %w", err)
		}
		if err := os.WriteFile(c.path(rel), []byte(body), 0o644); err != nil {
			return fmt.Errorf("openstack: write %s: %w", rel, err)
		}
	}
	return nil
}
