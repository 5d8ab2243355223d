// Package ovnports reads from the Neutron API what the OVN metadata path of a chassis is made of:
// which networks have VM ports bound to a host (binding:host_id, the chassis's hostname as
// ovn-controller reports it) and each network's metadata port (device_owner network:distributed,
// the localport neutron creates per network when [ovn] ovn_metadata_enabled is on), with the
// prefix lengths of its subnets. neutron-ovn-metadata-agent learns the same from the Southbound
// database (Port_Binding rows of the chassis, the localport's neutron:cidrs); metaproxy asks
// Neutron, like the rest of metaproxy.
//
// A response that is not a Neutron list (a proxy's error page, an empty object) is an error, never
// "no ports": the chassis component would otherwise take every namespace away.
package ovnports

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/subnets"

	"github.com/metaproxy/metaproxy/pkg/neutronlist"
)

// MetadataOwner is the device_owner of a network's metadata port (neutron_lib
// DEVICE_OWNER_DISTRIBUTED).
const MetadataOwner = "network:distributed"

// maxIDsPerRequest bounds the repeated network_id parameters of one request, so that URLs stay
// well under the 8 KiB many front ends accept.
const maxIDsPerRequest = 100

// Client asks one Neutron.
type Client struct {
	c *gophercloud.ServiceClient
}

// New returns a Client for the Neutron (network v2) service behind c.
func New(c *gophercloud.ServiceClient) *Client { return &Client{c: c} }

// MetadataPort is a network's metadata port as the chassis needs it.
type MetadataPort struct {
	NetworkID string
	ID        string
	MAC       net.HardwareAddr
	// IPv4 are its IPv4 fixed IPs. The agent puts only IPv4 addresses in the namespace.
	IPv4 []FixedIP
}

// FixedIP is one fixed IP of a port.
type FixedIP struct {
	Addr     netip.Addr
	SubnetID string
}

// vmPort is what is read of each bound port.
type vmPort struct {
	NetworkID   string `json:"network_id"`
	DeviceOwner string `json:"device_owner"`
	HostID      string `json:"binding:host_id"`
	VIFType     string `json:"binding:vif_type"`
}

// isVM reports whether a bound port is a VM's (or any workload's) port: neither one of Neutron's
// own ports (device_owner network:*: router, DHCP, metadata, floating IP, ...) nor a port whose
// binding failed or was never made. These are the ports ovn-controller binds to the chassis as
// type "" logical ports, the ones the agent counts.
func (p vmPort) isVM() bool {
	return !strings.HasPrefix(p.DeviceOwner, "network:") && p.VIFType != "binding_failed" && p.VIFType != "unbound"
}

// VMNetworks returns the sorted ids of the networks that have a VM port bound to host.
func (c *Client) VMNetworks(ctx context.Context, host string) ([]string, error) {
	if host == "" {
		return nil, errors.New("ovnports: empty host")
	}
	byHost, err := c.vmNetworks(ctx, url.Values{"binding:host_id": {host}})
	if err != nil {
		return nil, fmt.Errorf("list the VM ports bound to %s: %w", host, err)
	}
	return byHost[host], nil
}

// VMNetworksByHost returns, for every host with VM ports bound to it, the sorted ids of their
// networks: one request for the whole cloud (only four fields of each port are sent).
func (c *Client) VMNetworksByHost(ctx context.Context) (map[string][]string, error) {
	byHost, err := c.vmNetworks(ctx, url.Values{})
	if err != nil {
		return nil, fmt.Errorf("list the bound VM ports: %w", err)
	}
	return byHost, nil
}

func (c *Client) vmNetworks(ctx context.Context, q url.Values) (map[string][]string, error) {
	for _, f := range []string{"network_id", "device_owner", "binding:host_id", "binding:vif_type"} {
		q.Add("fields", f)
	}
	sets := map[string]map[string]bool{}
	err := c.each(ctx, "ports", q, func(p neutronlist.Page) error {
		var ps []vmPort
		if err := p.ExtractIntoSlicePtr(&ps, "ports"); err != nil {
			return err
		}
		for _, vp := range ps {
			if vp.HostID == "" || vp.NetworkID == "" || !vp.isVM() {
				continue
			}
			if host := q.Get("binding:host_id"); host != "" && vp.HostID != host {
				return fmt.Errorf("neutron returned a port bound to %q for binding:host_id=%s (is the port binding extension on?)", vp.HostID, host)
			}
			if sets[vp.HostID] == nil {
				sets[vp.HostID] = map[string]bool{}
			}
			sets[vp.HostID][vp.NetworkID] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string][]string, len(sets))
	for host, set := range sets {
		out[host] = sortedKeys(set)
	}
	return out, nil
}

// MetadataPorts returns the metadata port of each of networks that has one (nil networks: of
// every network). A network with several (which neutron does not make) gets the one with the
// lowest id, so that every reader picks the same.
func (c *Client) MetadataPorts(ctx context.Context, networks []string) (map[string]MetadataPort, error) {
	out := map[string]MetadataPort{}
	err := c.chunked(networks, func(ids []string) error {
		q := url.Values{"device_owner": {MetadataOwner}, "network_id": ids}
		for _, f := range []string{"id", "network_id", "mac_address", "fixed_ips"} {
			q.Add("fields", f)
		}
		return c.each(ctx, "ports", q, func(p neutronlist.Page) error {
			ps, err := ports.ExtractPorts(ports.PortPage{LinkedPageBase: p.LinkedPageBase})
			if err != nil {
				return err
			}
			for _, port := range ps {
				if len(ids) > 0 && !slices.Contains(ids, port.NetworkID) {
					return fmt.Errorf("neutron returned port %s of network %q, which was not asked for", port.ID, port.NetworkID)
				}
				mp, err := metadataPort(port)
				if err != nil {
					return err
				}
				if old, ok := out[mp.NetworkID]; ok && old.ID < mp.ID {
					continue
				}
				out[mp.NetworkID] = mp
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list metadata ports (device_owner %s): %w", MetadataOwner, err)
	}
	return out, nil
}

func metadataPort(p ports.Port) (MetadataPort, error) {
	mac, err := net.ParseMAC(p.MACAddress)
	if err != nil || len(mac) != 6 {
		return MetadataPort{}, fmt.Errorf("metadata port %s of network %s: MAC %q: want a 48-bit MAC", p.ID, p.NetworkID, p.MACAddress)
	}
	mp := MetadataPort{NetworkID: p.NetworkID, ID: p.ID, MAC: mac}
	for _, ip := range p.FixedIPs {
		a, err := netip.ParseAddr(ip.IPAddress)
		if err != nil {
			return MetadataPort{}, fmt.Errorf("metadata port %s: fixed IP %q: %w", p.ID, ip.IPAddress, err)
		}
		if a.Is4() {
			mp.IPv4 = append(mp.IPv4, FixedIP{Addr: a, SubnetID: ip.SubnetID})
		}
	}
	return mp, nil
}

// SubnetPrefixes returns the CIDR of every subnet of networks, by subnet id.
func (c *Client) SubnetPrefixes(ctx context.Context, networks []string) (map[string]netip.Prefix, error) {
	out := map[string]netip.Prefix{}
	if len(networks) == 0 {
		return out, nil
	}
	err := c.chunked(networks, func(ids []string) error {
		q := url.Values{"network_id": ids}
		for _, f := range []string{"id", "network_id", "cidr"} {
			q.Add("fields", f)
		}
		return c.each(ctx, "subnets", q, func(p neutronlist.Page) error {
			ss, err := subnets.ExtractSubnets(subnets.SubnetPage{LinkedPageBase: p.LinkedPageBase})
			if err != nil {
				return err
			}
			for _, s := range ss {
				pfx, err := netip.ParsePrefix(s.CIDR)
				if err != nil {
					return fmt.Errorf("subnet %s: cidr %q: %w", s.ID, s.CIDR, err)
				}
				out[s.ID] = pfx
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list subnets: %w", err)
	}
	return out, nil
}

// Addresses returns the metadata port's IPv4 addresses with their subnets' prefix lengths (the
// agent's neutron:cidrs, IPv4 only), sorted. A fixed IP whose subnet is not in prefixes is left out.
func (mp MetadataPort) Addresses(prefixes map[string]netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, ip := range mp.IPv4 {
		if pfx, ok := prefixes[ip.SubnetID]; ok && pfx.Addr().Is4() && pfx.Contains(ip.Addr) {
			out = append(out, netip.PrefixFrom(ip.Addr, pfx.Bits()))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// chunked calls fn with networks in slices of at most maxIDsPerRequest (one call with nil when
// networks is nil, meaning "all").
func (c *Client) chunked(networks []string, fn func([]string) error) error {
	if networks == nil {
		return fn(nil)
	}
	ids := append([]string(nil), networks...)
	sort.Strings(ids)
	ids = slices.Compact(ids)
	for len(ids) > 0 {
		n := min(len(ids), maxIDsPerRequest)
		if err := fn(ids[:n]); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

// each walks every page of GET /v2.0/<resource>?<q>.
func (c *Client) each(ctx context.Context, resource string, q url.Values, fn func(neutronlist.Page) error) error {
	u := c.c.ServiceURL(resource)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return neutronlist.Each(ctx, c.c, u, resource, fn)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ControllerBinary is the binary Neutron reports for the agent of an ovn-controller (its chassis).
const ControllerBinary = "ovn-controller"

// HostHasChassis reports whether Neutron knows an ovn-controller agent on host (GET
// /v2.0/agents?binary=ovn-controller&host=<host>): the check that host really is how Neutron names
// this chassis, before its namespaces are removed because no VM port is bound to it.
func (c *Client) HostHasChassis(ctx context.Context, host string) (bool, error) {
	found := false
	q := url.Values{"binary": {ControllerBinary}, "host": {host}, "fields": {"host"}}
	err := c.each(ctx, "agents", q, func(p neutronlist.Page) error {
		var as []struct {
			Host string `json:"host"`
		}
		if err := p.ExtractIntoSlicePtr(&as, "agents"); err != nil {
			return err
		}
		for _, a := range as {
			found = found || a.Host == host
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("list the ovn-controller agents of %s: %w", host, err)
	}
	return found, nil
}
