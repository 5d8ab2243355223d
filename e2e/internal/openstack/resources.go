//go:build e2e

package openstack

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/routers"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/portsbinding"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/subnets"
)

// Network is a Neutron network with one IPv4 subnet (DHCP enabled) and the DHCP port the DHCP
// agent would have created (its address is where VMs route 169.254.169.254).
type Network struct {
	ID         string
	Name       string
	ProjectID  string
	SubnetID   string
	CIDR       string // e.g. 10.0.0.0/24
	GatewayIP  string // e.g. 10.0.0.1 (nothing answers there unless a router is attached)
	DHCPPortID string
	DHCPIP     string // e.g. 10.0.0.2
	DHCPMAC    string
}

// VMSpec describes an instance to create.
type VMSpec struct {
	// Name is nova's display_name. Empty: Hostname.
	Name string
	// Hostname is the instance hostname; nova serves "<Hostname>.<DHCPDomain>". Required.
	Hostname string
	// IP is the fixed IP on the network's subnet. Empty: Neutron allocates one.
	IP string
	// ProjectID owns the port and the instance. Empty: the network's project.
	ProjectID string
	// UserData is served raw at .../user_data (nova stores it base64-encoded). Nil: none (404).
	UserData []byte
	// Metadata is the instance metadata (meta_data.json "meta").
	Metadata map[string]string
	// PublicKeys maps a key pair name to its OpenSSH public key. Nova serves one key pair per
	// instance (meta_data.json "public_keys" and "keys"), so at most one entry is accepted.
	PublicKeys map[string]string
	// HostID is the port's binding:host_id, as nova-compute sets it (ML2/OVN binds the port to
	// the chassis of that host). Empty: unbound.
	HostID string
}

// VM is an instance: a Neutron port (device_owner compute:nova) and a nova instance row.
type VM struct {
	InstanceID string // nova uuid = the port's device_id
	PortID     string
	NetworkID  string
	IP         string
	MAC        string // the port's mac_address
	ProjectID  string
	Hostname   string // as nova serves it: "<VMSpec.Hostname>.<DHCPDomain>"
	Name       string
}

// Router is a Neutron router with one interface port per attached network.
type Router struct {
	ID string
	// InterfacePorts maps network id to the router's interface port (device_owner
	// network:router_interface) on it.
	InterfacePorts map[string]string
}

// CreateNetwork creates a network and an IPv4 subnet (DHCP enabled) owned by the cloud's project,
// and the DHCP port the DHCP agent would create (device_owner network:dhcp, the first free address).
func (c *Cloud) CreateNetwork(ctx context.Context, name, cidr string) (Network, error) {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil || !prefix.Addr().Is4() {
		return Network{}, fmt.Errorf("openstack: network %s: want an IPv4 CIDR, got %q", name, cidr)
	}
	up, dhcp := true, true
	n, err := networks.Create(ctx, c.network, networks.CreateOpts{Name: name, AdminStateUp: &up, TenantID: c.opts.ProjectID}).Extract()
	if err != nil {
		return Network{}, fmt.Errorf("openstack: create network %s: %w", name, err)
	}
	out := Network{ID: n.ID, Name: name, ProjectID: c.opts.ProjectID, CIDR: prefix.Masked().String()}
	s, err := subnets.Create(ctx, c.network, subnets.CreateOpts{NetworkID: n.ID, Name: name + "-subnet",
		CIDR: out.CIDR, IPVersion: gophercloud.IPv4, EnableDHCP: &dhcp, TenantID: c.opts.ProjectID}).Extract()
	if err != nil {
		return out, errors.Join(fmt.Errorf("openstack: create subnet %s on %s: %w", cidr, name, err), c.DeleteNetwork(ctx, out))
	}
	out.SubnetID, out.GatewayIP = s.ID, s.GatewayIP
	if c.opts.OVN != nil {
		// No DHCP agent with ML2/OVN: OVN answers DHCP itself, and neutron made the network's
		// metadata port (network:distributed) when the subnet was created.
		c.opts.Logf("openstack: network %s %s (%s), ML2/OVN", name, n.ID, out.CIDR)
		return out, nil
	}
	host, _ := os.Hostname()
	p, err := ports.Create(ctx, c.network, ports.CreateOpts{
		NetworkID:   n.ID,
		DeviceOwner: "network:dhcp",
		DeviceID:    DHCPDeviceID(n.ID, host),
		FixedIPs:    []ports.IP{{SubnetID: s.ID}},
		TenantID:    c.opts.ProjectID,
	}).Extract()
	if err != nil {
		return out, errors.Join(fmt.Errorf("openstack: create DHCP port on %s: %w", name, err), c.DeleteNetwork(ctx, out))
	}
	out.DHCPPortID, out.DHCPMAC = p.ID, p.MACAddress
	if len(p.FixedIPs) > 0 {
		out.DHCPIP = p.FixedIPs[0].IPAddress
	}
	c.opts.Logf("openstack: network %s %s (%s), DHCP port %s", name, n.ID, out.CIDR, out.DHCPIP)
	return out, nil
}

// DeleteNetwork deletes the network's compute ports (not their nova instances) and the network
// (its subnet and DHCP port go with it). Router interfaces must be removed first.
func (c *Cloud) DeleteNetwork(ctx context.Context, n Network) error {
	pages, err := ports.List(c.network, ports.ListOpts{NetworkID: n.ID, DeviceOwner: "compute:nova"}).AllPages(ctx)
	if err != nil {
		return fmt.Errorf("openstack: list ports of %s: %w", n.ID, err)
	}
	ps, err := ports.ExtractPorts(pages)
	if err != nil {
		return fmt.Errorf("openstack: list ports of %s: %w", n.ID, err)
	}
	for _, p := range ps {
		if err := ports.Delete(ctx, c.network, p.ID).ExtractErr(); err != nil && !gophercloud.ResponseCodeIs(err, 404) {
			return fmt.Errorf("openstack: delete port %s: %w", p.ID, err)
		}
	}
	if err := networks.Delete(ctx, c.network, n.ID).ExtractErr(); err != nil && !gophercloud.ResponseCodeIs(err, 404) {
		return fmt.Errorf("openstack: delete network %s: %w", n.ID, err)
	}
	return nil
}

// CreateVM does what nova does when it boots an instance on n: it creates the Neutron port
// (device_owner compute:nova, device_id the new instance uuid, the requested fixed IP, the
// instance's project) and the instance row through nova's objects, with user data, metadata, key
// pair and the port in its network info cache (so network_data.json describes it).
func (c *Cloud) CreateVM(ctx context.Context, n Network, spec VMSpec) (VM, error) {
	if spec.Hostname == "" {
		return VM{}, errors.New("openstack: VMSpec.Hostname is required")
	}
	if len(spec.PublicKeys) > 1 {
		return VM{}, fmt.Errorf("openstack: VM %s: nova serves one key pair per instance, got %d", spec.Hostname, len(spec.PublicKeys))
	}
	if spec.Name == "" {
		spec.Name = spec.Hostname
	}
	if spec.ProjectID == "" {
		spec.ProjectID = n.ProjectID
	}
	vm := VM{InstanceID: uuid.NewString(), NetworkID: n.ID, ProjectID: spec.ProjectID,
		Hostname: spec.Hostname + "." + DHCPDomain, Name: spec.Name}
	fixed := ports.IP{SubnetID: n.SubnetID, IPAddress: spec.IP}
	var opts ports.CreateOptsBuilder = ports.CreateOpts{
		NetworkID:   n.ID,
		DeviceID:    vm.InstanceID,
		DeviceOwner: "compute:nova",
		FixedIPs:    []ports.IP{fixed},
		TenantID:    spec.ProjectID,
	}
	if spec.HostID != "" {
		opts = portsbinding.CreateOptsExt{CreateOptsBuilder: opts, HostID: spec.HostID}
	}
	p, err := ports.Create(ctx, c.network, opts).Extract()
	if err != nil {
		return VM{}, fmt.Errorf("openstack: create port for %s on %s: %w", spec.Hostname, n.ID, err)
	}
	vm.PortID, vm.MAC = p.ID, p.MACAddress
	if len(p.FixedIPs) > 0 {
		vm.IP = p.FixedIPs[0].IPAddress
	}

	var userData any
	if spec.UserData != nil {
		userData = base64.StdEncoding.EncodeToString(spec.UserData)
	}
	metadata := spec.Metadata
	if metadata == nil {
		metadata = map[string]string{}
	}
	keypairs := []map[string]string{}
	names := make([]string, 0, len(spec.PublicKeys))
	for name := range spec.PublicKeys {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		keypairs = append(keypairs, map[string]string{"name": name, "public_key": spec.PublicKeys[name], "type": "ssh"})
	}
	err = c.objects.call(map[string]any{
		"op": "create_instance", "uuid": vm.InstanceID, "project_id": spec.ProjectID,
		"user_id": "e2e-user", "hostname": spec.Hostname, "display_name": spec.Name,
		"user_data": userData, "metadata": metadata, "keypairs": keypairs,
		"vif": map[string]any{"port_id": vm.PortID, "mac": vm.MAC, "network_id": n.ID,
			"network_name": n.Name, "cidr": n.CIDR, "gateway": n.GatewayIP, "ip": vm.IP,
			"dhcp_server": n.DHCPIP, "mtu": 1500},
	}, nil)
	if err != nil {
		_ = ports.Delete(ctx, c.network, vm.PortID).ExtractErr()
		return VM{}, fmt.Errorf("openstack: create nova instance %s: %w", spec.Hostname, err)
	}
	c.opts.Logf("openstack: VM %s instance %s port %s %s %s", spec.Hostname, vm.InstanceID, vm.PortID, vm.IP, vm.MAC)
	return vm, nil
}

// DeleteVM deletes the instance row and its port, as deleting a server does.
func (c *Cloud) DeleteVM(ctx context.Context, vm VM) error {
	var errs []error
	if err := c.objects.call(map[string]any{"op": "delete_instance", "uuid": vm.InstanceID}, nil); err != nil {
		errs = append(errs, fmt.Errorf("openstack: delete nova instance %s: %w", vm.InstanceID, err))
	}
	if err := c.deletePort(ctx, vm.PortID); err != nil {
		errs = append(errs, fmt.Errorf("openstack: delete port %s: %w", vm.PortID, err))
	}
	return errors.Join(errs...)
}

// deletePort deletes a port, again when neutron-server answers 500: on the fixture's sqlite in
// WAL mode, a transaction that read before another process committed fails its first write at
// once with "database is locked" (SQLITE_BUSY_SNAPSHOT: the busy timeout does not apply), which
// a MySQL-backed Neutron never does. A port already gone (404) is deleted.
func (c *Cloud) deletePort(ctx context.Context, id string) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = ports.Delete(ctx, c.network, id).ExtractErr()
		if err == nil || gophercloud.ResponseCodeIs(err, 404) {
			return nil
		}
		if !gophercloud.ResponseCodeIs(err, 500) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	return err
}

// CreateRouter creates a router in the cloud's project and attaches each network's subnet to it
// (an interface port on the subnet's gateway address), as router mode needs.
func (c *Cloud) CreateRouter(ctx context.Context, name string, nets ...Network) (Router, error) {
	r, err := routers.Create(ctx, c.network, routers.CreateOpts{Name: name, TenantID: c.opts.ProjectID}).Extract()
	if err != nil {
		return Router{}, fmt.Errorf("openstack: create router %s: %w", name, err)
	}
	out := Router{ID: r.ID, InterfacePorts: map[string]string{}}
	for _, n := range nets {
		info, err := routers.AddInterface(ctx, c.network, r.ID, routers.AddInterfaceOpts{SubnetID: n.SubnetID}).Extract()
		if err != nil {
			return out, fmt.Errorf("openstack: attach %s to router %s: %w", n.ID, name, err)
		}
		out.InterfacePorts[n.ID] = info.PortID
	}
	return out, nil
}
