package resolve

import (
	"net/netip"
	"testing"
)

func TestMACFromLinkLocal(t *testing.T) {
	// Expected MACs were computed with oslo_utils.netutils.get_mac_addr_by_ipv6 (what
	// neutron-metadata-agent uses) from Debian's python3-oslo.utils.
	tests := map[string]struct {
		addr   string
		want   string
		wantOK bool
	}{
		"nova default OUI":                {addr: "fe80::f816:3eff:fe00:a05", want: "fa:16:3e:00:0a:05", wantOK: true},
		"nova default OUI other bytes":    {addr: "fe80::f816:3eff:fe12:3456", want: "fa:16:3e:12:34:56", wantOK: true},
		"local bit flips back":            {addr: "fe80::a8bb:ccff:fedd:eeff", want: "aa:bb:cc:dd:ee:ff", wantOK: true},
		"all zero universal MAC":          {addr: "fe80::200:ff:fe00:0", want: "00:00:00:00:00:00", wantOK: true},
		"u/l bit set after flip":          {addr: "fe80::ff:fe00:0", want: "02:00:00:00:00:00", wantOK: true},
		"upper end of fe80::/10":          {addr: "febf::f816:3eff:fe00:a05", want: "fa:16:3e:00:0a:05", wantOK: true},
		"zone is ignored":                 {addr: "fe80::f816:3eff:fe00:a05%eth0", want: "fa:16:3e:00:0a:05", wantOK: true},
		"uppercase input":                 {addr: "FE80::F816:3EFF:FE00:A05", want: "fa:16:3e:00:0a:05", wantOK: true},
		"global EUI-64 is not link-local": {addr: "2001:db8::f816:3eff:fe00:a05"},
		"link-local without ff:fe":        {addr: "fe80::1"},
		"privacy address":                 {addr: "fe80::9c3a:51d2:7b4e:10af"},
		"ipv4":                            {addr: "10.0.0.5"},
		"ipv4 link-local":                 {addr: "169.254.1.1"},
		"ipv4-mapped":                     {addr: "::ffff:10.0.0.5"},
		"multicast link-local":            {addr: "ff02::1"},
		"unique local":                    {addr: "fd00::f816:3eff:fe00:a05"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := MACFromLinkLocal(netip.MustParseAddr(tc.addr))
			if ok != tc.wantOK || got != tc.want {
				t.Fatalf("MACFromLinkLocal(%s) = %q, %v; want %q, %v", tc.addr, got, ok, tc.want, tc.wantOK)
			}
		})
	}
	if got, ok := MACFromLinkLocal(netip.Addr{}); ok || got != "" {
		t.Fatalf("MACFromLinkLocal(zero) = %q, %v; want \"\", false", got, ok)
	}
}

func TestNormalizeAddr(t *testing.T) {
	tests := map[string]struct {
		in, want string
	}{
		"ipv4 unchanged":       {in: "10.0.0.5", want: "10.0.0.5"},
		"ipv4-mapped unmapped": {in: "::ffff:10.0.0.5", want: "10.0.0.5"},
		"ipv6 unchanged":       {in: "2001:db8::5", want: "2001:db8::5"},
		"zone dropped":         {in: "fe80::1%eth0", want: "fe80::1"},
		"ipv4-compatible kept": {in: "::10.0.0.5", want: "::a00:5"},
		"link-local unchanged": {in: "fe80::f816:3eff:fe00:a05", want: "fe80::f816:3eff:fe00:a05"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := NormalizeAddr(netip.MustParseAddr(tc.in))
			if want := netip.MustParseAddr(tc.want); got != want {
				t.Fatalf("NormalizeAddr(%s) = %s, want %s", tc.in, got, want)
			}
		})
	}
}
