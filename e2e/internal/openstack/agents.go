//go:build e2e

package openstack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/portsbinding"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
)

// Agent types as neutron-server reports them in agent_type.
const (
	DHCPAgent = "DHCP agent"
	L3Agent   = "L3 agent"
)

// RegisterAgents records one agent of agentType (DHCPAgent or L3Agent) per host in neutron-server,
// as the agent's first state report does (neutron's own create_or_update_agent, run by
// scripts/neutron_agents.py; no agent process runs here), and returns host -> agent id. Scheduling
// to them then works through the API as to real agents. They report only once: after neutron's
// agent_down_time (75 s) they count as dead, which changes nothing about their scheduling.
func (c *Cloud) RegisterAgents(ctx context.Context, agentType string, hosts ...string) (map[string]string, error) {
	out, err := c.agentsScript(ctx, append([]string{"register", agentType}, hosts...)...)
	if err != nil {
		return nil, err
	}
	ids := map[string]string{}
	if err := json.Unmarshal(out, &ids); err != nil || len(ids) != len(hosts) {
		return nil, fmt.Errorf("openstack: register agents: %q: %v", out, err)
	}
	return ids, nil
}

// KillAgents makes agents look dead to neutron-server (last heartbeat an hour ago).
func (c *Cloud) KillAgents(ctx context.Context, ids ...string) error {
	_, err := c.agentsScript(ctx, append([]string{"kill"}, ids...)...)
	return err
}

func (c *Cloud) agentsScript(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, Python, append([]string{c.script("neutron_agents.py"), c.path("neutron/neutron.conf")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("openstack: neutron_agents.py %s: %w: %s", args[0], err, lastLines(stderr.String(), 5))
	}
	return out, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// DHCPDeviceID is the device_id of the DHCP port of the DHCP agent on host for a network:
// dhcp<uuid5(NAMESPACE_DNS, host name up to its first dot)>-<network id>
// (neutron/common/utils.py get_dhcp_agent_device_id).
func DHCPDeviceID(networkID, host string) string {
	short, _, _ := strings.Cut(host, ".")
	return fmt.Sprintf("dhcp%s-%s", uuid.NewSHA1(uuid.NameSpaceDNS, []byte(short)), networkID)
}

// SetUpDHCP does what the DHCP agent on host does with a network it was given
// (neutron/agent/linux/dhcp.py DeviceManager.setup_dhcp_port, through the create_dhcp_port and
// update_dhcp_port RPCs of neutron/api/rpc/handlers/dhcp_rpc.py): it keeps its own DHCP port, or
// claims the network's reserved one (device_id reserved_dhcp_port), or creates one on subnetID;
// either way device_owner network:dhcp, its device_id and binding:host_id host. Returns the port id.
func (c *Cloud) SetUpDHCP(ctx context.Context, networkID, subnetID, host string) (string, error) {
	device := DHCPDeviceID(networkID, host)
	pages, err := ports.List(c.network, ports.ListOpts{NetworkID: networkID, DeviceOwner: "network:dhcp"}).AllPages(ctx)
	if err != nil {
		return "", fmt.Errorf("openstack: list DHCP ports of %s: %w", networkID, err)
	}
	existing, err := ports.ExtractPorts(pages)
	if err != nil {
		return "", err
	}
	for _, want := range []string{device, "reserved_dhcp_port"} {
		for _, p := range existing {
			if p.DeviceID != want {
				continue
			}
			_, err := ports.Update(ctx, c.network, p.ID, portsbinding.UpdateOptsExt{
				UpdateOptsBuilder: ports.UpdateOpts{DeviceID: &device}, HostID: &host}).Extract()
			if err != nil {
				return "", fmt.Errorf("openstack: claim DHCP port %s for %s: %w", p.ID, host, err)
			}
			return p.ID, nil
		}
	}
	p, err := ports.Create(ctx, c.network, portsbinding.CreateOptsExt{
		CreateOptsBuilder: ports.CreateOpts{NetworkID: networkID, DeviceOwner: "network:dhcp", DeviceID: device,
			FixedIPs: []ports.IP{{SubnetID: subnetID}}, TenantID: c.opts.ProjectID},
		HostID: host}).Extract()
	if err != nil {
		return "", fmt.Errorf("openstack: create DHCP port of %s on %s: %w", host, networkID, err)
	}
	return p.ID, nil
}

// BindPorts sets binding:host_id of ports to host, as an L3 agent's sync does for the ports of
// the routers it hosts (neutron/api/rpc/handlers/l3_rpc.py _ensure_host_set_on_ports).
func (c *Cloud) BindPorts(ctx context.Context, host string, portIDs ...string) error {
	var errs []error
	for _, id := range portIDs {
		if _, err := ports.Update(ctx, c.network, id, portsbinding.UpdateOptsExt{UpdateOptsBuilder: ports.UpdateOpts{}, HostID: &host}).Extract(); err != nil {
			errs = append(errs, fmt.Errorf("openstack: bind port %s to %s: %w", id, host, err))
		}
	}
	return errors.Join(errs...)
}
