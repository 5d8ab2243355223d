// Package demo holds the ports that `extproc --demo` (and `make run`) resolves against when no
// OpenStack is at hand: the JSON body of a Neutron `GET /v2.0/ports`, embedded in the binary.
//
// The demo cloud has two projects (alice, bob), two networks whose 10.0.0.0/24 subnets overlap,
// and one router:
//
//	network A  aaaaaaaa-0000-4000-8000-00000000000a  subnet 10.0.0.0/24
//	network B  bbbbbbbb-0000-4000-8000-00000000000b  subnets 10.0.0.0/24 and 10.0.1.0/24
//	router     cccccccc-0000-4000-8000-00000000000c  interfaces 10.0.0.1 on A, 10.0.1.1 on B
//
//	address   network  instance (device_id)                  project (alice / bob)             port
//	10.0.0.5  A        11111111-0000-4000-8000-00000000a005  a11ce000000040008000000000000001  0a0a0005-0000-4000-8000-00000000a005
//	10.0.0.6  A        11111111-0000-4000-8000-00000000a006  a11ce000000040008000000000000001  0a0a0006-0000-4000-8000-00000000a006
//	10.0.0.5  B        22222222-0000-4000-8000-00000000b005  b0b00000000040008000000000000002  0b0b0005-0000-4000-8000-00000000b005
//
// The instance MACs are fa:16:3e:0a:00:05, fa:16:3e:0a:00:06 and fa:16:3e:0b:00:05, so their IPv6
// link-local addresses fe80::f816:3eff:fe0a:5, fe80::f816:3eff:fe0a:6 and fe80::f816:3eff:fe0b:5
// resolve too. Each network also has a DHCP port (device_owner network:dhcp) at 10.0.0.2.
//
// What to expect:
//
//	extproc resolve --network aaaaaaaa-0000-4000-8000-00000000000a --ip 10.0.0.5  -> instance ...a005 (alice)
//	extproc resolve --network bbbbbbbb-0000-4000-8000-00000000000b --ip 10.0.0.5  -> instance ...b005 (bob)
//	extproc resolve --network aaaaaaaa-0000-4000-8000-00000000000a --ip 10.0.0.9  -> not found (404)
//	router cccccccc-0000-4000-8000-00000000000c, 10.0.0.6  -> instance ...a006 (only network A has it)
//	router cccccccc-0000-4000-8000-00000000000c, 10.0.0.5  -> ambiguous (500): both networks have it,
//	                                                          which is why network mode is preferred
package demo

import _ "embed"

// The ids of the demo cloud, as listed in the package comment.
const (
	NetworkA = "aaaaaaaa-0000-4000-8000-00000000000a"
	NetworkB = "bbbbbbbb-0000-4000-8000-00000000000b"
	RouterID = "cccccccc-0000-4000-8000-00000000000c"

	ProjectAlice = "a11ce000000040008000000000000001"
	ProjectBob   = "b0b00000000040008000000000000002"

	InstanceA5 = "11111111-0000-4000-8000-00000000a005" // 10.0.0.5 on network A
	InstanceA6 = "11111111-0000-4000-8000-00000000a006" // 10.0.0.6 on network A
	InstanceB5 = "22222222-0000-4000-8000-00000000b005" // 10.0.0.5 on network B

	PortA5 = "0a0a0005-0000-4000-8000-00000000a005"
	PortA6 = "0a0a0006-0000-4000-8000-00000000a006"
	PortB5 = "0b0b0005-0000-4000-8000-00000000b005"
)

//go:embed ports.json
var ports []byte

// Ports returns a copy of the embedded ports.json, a Neutron `GET /v2.0/ports` body.
func Ports() []byte {
	return append([]byte(nil), ports...)
}
