package resolve

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// errInvalidAddr is returned for a Query without an address: a bug in the caller, not a lookup result.
var errInvalidAddr = errors.New("query has no valid source address")

// NormalizeAddr returns the form of a VM source address that ports are looked up by: an
// IPv4-mapped IPv6 address (::ffff:10.0.0.5, what a dual-stack listener reports for an IPv4 peer)
// becomes plain IPv4, as neutron-metadata-agent does, and an IPv6 zone (fe80::1%eth0) is dropped,
// since Neutron never stores one.
func NormalizeAddr(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// MACFromLinkLocal returns the MAC address that an IPv6 link-local address (fe80::/10) was derived
// from by modified EUI-64 (RFC 4291 appendix A): the interface identifier with ff:fe removed from
// its middle and the universal/local bit flipped back, in Neutron's form (lowercase, colon
// separated, e.g. "fa:16:3e:00:0a:05" for fe80::f816:3eff:fe00:a05).
//
// neutron-metadata-agent matches such a source on the port's mac_address, because a link-local
// address is never a fixed IP of a port (oslo_utils.netutils.get_mac_addr_by_ipv6). Unlike neutron,
// which decodes any link-local address, the second result is false unless the address is IPv6
// link-local and its interface identifier carries the ff:fe marker of EUI-64: a privacy or
// stable-privacy address encodes no MAC, and decoding one would yield an arbitrary MAC.
func MACFromLinkLocal(a netip.Addr) (string, bool) {
	if !a.Is6() || a.Is4In6() || !a.IsLinkLocalUnicast() {
		return "", false
	}
	b := a.As16()
	if b[11] != 0xff || b[12] != 0xfe {
		return "", false
	}
	mac := net.HardwareAddr{b[8] ^ 0x02, b[9], b[10], b[13], b[14], b[15]}
	return mac.String(), true
}

// target is what a port must carry to own a source address: the address as a fixed IP or, for an
// EUI-64 link-local IPv6 address, the MAC address it encodes.
type target struct {
	addr netip.Addr // normalized source address
	mac  string     // non-empty: match mac_address instead of fixed_ips
}

// targetFor turns a query address into what ports are matched on, as neutron-metadata-agent does:
// IPv4-mapped IPv6 is unmapped and IPv6 link-local is matched by MAC.
func targetFor(a netip.Addr) (target, error) {
	if !a.IsValid() {
		return target{}, errInvalidAddr
	}
	a = NormalizeAddr(a)
	if a.Is6() && a.IsLinkLocalUnicast() {
		mac, ok := MACFromLinkLocal(a)
		if !ok {
			return target{}, fmt.Errorf("link-local address %s does not embed a MAC (not EUI-64): %w", a, ErrNotFound)
		}
		return target{addr: a, mac: mac}, nil
	}
	return target{addr: a}, nil
}

// String names the target in errors: "10.0.0.5" or "fe80::f816:3eff:fe00:a05 (mac fa:16:3e:00:0a:05)".
func (t target) String() string {
	if t.mac != "" {
		return t.addr.String() + " (mac " + t.mac + ")"
	}
	return t.addr.String()
}
