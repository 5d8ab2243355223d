//go:build e2e

package ovnlab

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/portsecurity"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

//go:embed scripts/dhclient-script
var dhclientScript string

//go:embed scripts/dhclient.conf
var dhclientConf string

// MetadataPortOwner is the device_owner of the port neutron creates per network for metadata.
const MetadataPortOwner = "network:distributed"

// Network is a Neutron network with one IPv4 subnet (DHCP on) and the metadata port neutron made.
type Network struct {
	openstack.Network
	MetadataPortID string
	MetadataIP     string // the metadata port's address, where VMs route 169.254.169.254
	MetadataMAC    string
}

// Namespace is the network's ovnmeta namespace name (made by the agent or by xds chassis).
func (n Network) Namespace() string { return "ovnmeta-" + n.ID }

// VM is an instance on the chassis: a Neutron port bound to the chassis, a nova instance row, and a
// namespace plugged into br-int whose eth0 got its address from OVN's DHCP.
type VM struct {
	openstack.VM
	Network   Network
	Name      string
	Namespace string // ovnlab-<Name>
	port      string // the OVS port (host end of the veth)
	dhcp      *openstack.Process
}

// CreateNetwork creates a network with an IPv4 subnet (DHCP enabled) and waits for neutron to give
// its metadata port an address on the subnet. The network's ovnmeta namespace is recorded as this
// run's (whoever creates it), so that Close, or the next run after a crash, removes it.
func (l *Lab) CreateNetwork(ctx context.Context, name, cidr string) (Network, error) {
	on, err := l.cloud.CreateNetwork(ctx, name, cidr)
	if err != nil {
		return Network{}, fmt.Errorf("ovnlab: %w", err)
	}
	n := Network{Network: on}
	if err := vmnet.Track(n.Namespace()); err != nil {
		return n, fmt.Errorf("ovnlab: %w", err)
	}
	l.mu.Lock()
	l.nets = append(l.nets, n)
	l.mu.Unlock()
	err = waitFor(ctx, 30*time.Second, "the metadata port of "+name, nil, func() error {
		pages, err := ports.List(l.cloud.NetworkClient(), ports.ListOpts{NetworkID: n.ID, DeviceOwner: MetadataPortOwner}).AllPages(ctx)
		if err != nil {
			return err
		}
		ps, err := ports.ExtractPorts(pages)
		if err != nil {
			return err
		}
		for _, p := range ps {
			for _, ip := range p.FixedIPs {
				if ip.SubnetID == n.SubnetID {
					n.MetadataPortID, n.MetadataIP, n.MetadataMAC = p.ID, ip.IPAddress, p.MACAddress
					return nil
				}
			}
		}
		return fmt.Errorf("metadata ports: %+v", ps)
	})
	if err != nil {
		return n, err
	}
	l.opts.Logf("ovnlab: network %s %s, metadata port %s at %s", name, n.ID, n.MetadataPortID, n.MetadataIP)
	return n, nil
}

var vmName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,10}$`)

// CreateVM does what nova does to boot an instance on the chassis: the Neutron port with
// binding:host_id = the chassis's host and the instance row (openstack.CreateVM), then the "VIF":
// a namespace ovnlab-<name> whose eth0 (the port's MAC, MTU 1442) is the peer of an OVS port on
// br-int with external_ids:iface-id = the port. It waits for ovn-controller to bind the port, then
// runs dhclient in the namespace until OVN's DHCP gave it the fixed IP and its routes.
func (l *Lab) CreateVM(ctx context.Context, n Network, name string, spec openstack.VMSpec) (*VM, error) {
	if !vmName.MatchString(name) {
		return nil, fmt.Errorf("ovnlab: VM name %q: want 1-11 lower-case letters, digits, '-'", name)
	}
	spec.HostID = l.opts.Chassis
	var ovm openstack.VM
	// The first port after neutron-server starts may fail while its NB connection does not see the
	// neutron_pg_drop port group yet (500, the port is not created): retried.
	err := waitFor(ctx, 30*time.Second, "the port of VM "+name, nil, func() error {
		var err error
		ovm, err = l.cloud.CreateVM(ctx, n.Network, spec)
		return err
	})
	if err != nil {
		return nil, err
	}
	vm := &VM{VM: ovm, Network: n, Name: name, Namespace: "ovnlab-" + name, port: "ovo-" + name}
	l.mu.Lock()
	l.vms[name] = vm
	l.mu.Unlock()
	// No security groups on the lab's VMs, so that OVN sends their traffic through no conntrack:
	// the only datapath here, OVS 3.1.0's userspace one, aborts under sustained short connections
	// (lib/conntrack.c: "assertion conn->conn_type == CT_CONN_TYPE_DEFAULT failed in
	// conn_update_state()"; OVN commits stateful ACL connections with nat), taking every VM's
	// network down. The metadata path does not depend on security groups (the metadata port has
	// none), and a kernel datapath has no such problem.
	off, none := false, []string{}
	if _, err := ports.Update(ctx, l.cloud.NetworkClient(), vm.PortID, portsecurity.PortUpdateOptsExt{
		UpdateOptsBuilder: ports.UpdateOpts{SecurityGroups: &none}, PortSecurityEnabled: &off}).Extract(); err != nil {
		return vm, fmt.Errorf("ovnlab: VM %s: turn port security off: %w", name, err)
	}
	if err := l.plug(ctx, vm); err != nil {
		return vm, err
	}
	return vm, nil
}

// plug makes the VM's namespace, plugs it into br-int, waits for the binding and for DHCP.
func (l *Lab) plug(ctx context.Context, vm *VM) error {
	err := vmnet.CreateNamespace(ctx, vm.Namespace,
		[]string{"ip", "link", "add", vm.port, "type", "veth", "peer", "name", "eth0", "netns", vm.Namespace},
		[]string{"ip", "-n", vm.Namespace, "link", "set", "eth0", "address", vm.MAC, "mtu", "1442"},
		[]string{"ip", "-n", vm.Namespace, "link", "set", "lo", "up"},
		[]string{"ip", "-n", vm.Namespace, "link", "set", "eth0", "up"},
		[]string{"ip", "link", "set", vm.port, "up"},
		// The userspace datapath and veths leave TCP checksums partial; nothing fills them in, and
		// the receiving side drops the segments.
		[]string{"ip", "netns", "exec", vm.Namespace, "iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-p", "tcp", "-m", "tcp", "-j", "CHECKSUM", "--checksum-fill"},
	)
	if err != nil {
		return fmt.Errorf("ovnlab: VM %s: %w", vm.Name, err)
	}
	if _, err := l.VSCtl(ctx, "--may-exist", "add-port", Bridge, vm.port, "--", "set", "Interface", vm.port,
		"external_ids:iface-id="+vm.PortID, "external_ids:attached-mac="+vm.MAC, "external_ids:iface-status=active",
		"external_ids:vm-uuid="+vm.InstanceID); err != nil {
		return fmt.Errorf("ovnlab: VM %s: %w", vm.Name, err)
	}
	if err := waitFor(ctx, 30*time.Second, "ovn-controller binding the port of VM "+vm.Name, nil, func() error {
		out, err := l.SBCtl(ctx, "--bare", "--columns=chassis", "find", "Port_Binding", "logical_port="+vm.PortID)
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("not bound (%v)", err)
		}
		return nil
	}); err != nil {
		return err
	}
	dir := l.path("vm/" + vm.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	script := strings.ReplaceAll(dhclientScript, "@DHCP_LOG@", dir+"/dhcp.log")
	if err := errors.Join(os.WriteFile(dir+"/dhclient-script", []byte(script), 0o755),
		os.WriteFile(dir+"/dhclient.conf", []byte(dhclientConf), 0o644)); err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	// In the foreground (-d) so that the lab owns it; it keeps the lease (OVN's lasts 12 h).
	vm.dhcp, err = openstack.StartProcess("dhclient-"+vm.Name, l.path("log/dhclient-"+vm.Name+".out"), nil,
		"ip", "netns", "exec", vm.Namespace, "dhclient", "-d", "-v", "-cf", dir+"/dhclient.conf", "-sf", dir+"/dhclient-script",
		"-lf", dir+"/dhclient.leases", "-pf", dir+"/dhclient.pid", "eth0")
	if err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	t0 := time.Now()
	if err := waitFor(ctx, 30*time.Second, "the DHCP lease of VM "+vm.Name, vm.dhcp, func() error {
		out, err := exec.CommandContext(ctx, "ip", "-n", vm.Namespace, "route", "show", "169.254.169.254").Output()
		if err != nil || !strings.Contains(string(out), "via "+vm.Network.MetadataIP) {
			return fmt.Errorf("no route to 169.254.169.254 via the metadata port yet (%q, %v)", out, err)
		}
		return nil
	}); err != nil {
		return err
	}
	lease, _ := os.ReadFile(dir + "/dhcp.log")
	l.opts.Logf("ovnlab: VM %s (%s, port %s) got its lease from OVN in %s: %s", vm.Name, vm.IP, vm.PortID,
		time.Since(t0).Round(10*time.Millisecond), strings.TrimSpace(string(lease)))
	return nil
}

// stopDHCP ends the VM's dhclient.
func (vm *VM) stopDHCP(grace time.Duration) {
	if vm.dhcp != nil {
		vm.dhcp.Stop(grace)
	}
}

// DeleteVM does what deleting a server does: the VIF is unplugged (OVS port, namespace), then the
// instance row and the port go.
func (l *Lab) DeleteVM(ctx context.Context, vm *VM) error {
	vm.stopDHCP(l.opts.StopGrace)
	var errs []error
	if _, err := l.VSCtl(ctx, "--if-exists", "del-port", vm.port); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, vmnet.DeleteNamespace(ctx, vm.Namespace), l.cloud.DeleteVM(ctx, vm.VM))
	l.mu.Lock()
	delete(l.vms, vm.Name)
	l.mu.Unlock()
	return errors.Join(errs...)
}
