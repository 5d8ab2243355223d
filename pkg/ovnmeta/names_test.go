package ovnmeta

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	id := "6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11"
	if host, inner := VethNames(id); host != "tap6b1f4f4e-00" || inner != "tap6b1f4f4e-01" {
		t.Errorf("VethNames = %s, %s", host, inner)
	}
	if got, ok := NetworkOf("ovnmeta-" + id); !ok || got != id {
		t.Errorf("NetworkOf = %q, %v", got, ok)
	}
	for _, bad := range []string{"qdhcp-" + id, "ovnmeta-" + strings.ToUpper(id), "ovnmeta-x", "ovnmeta-" + id + "x"} {
		if _, ok := NetworkOf(bad); ok {
			t.Errorf("NetworkOf(%q) accepted it", bad)
		}
	}
}

func TestNetworkValidate(t *testing.T) {
	good := Network{ID: "6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11", PortID: "p", MAC: net.HardwareAddr{0xfa, 0x16, 0x3e, 0, 0, 1},
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Network{ID: "../etc", MAC: net.HardwareAddr{1}, Addresses: []netip.Prefix{netip.MustParsePrefix("fd00::2/64")}}
	err := bad.Validate()
	if err == nil {
		t.Fatal("invalid network accepted")
	}
	for _, want := range []string{"not a lower-case UUID", "metadata port id", "48-bit", "not an IPv4"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
