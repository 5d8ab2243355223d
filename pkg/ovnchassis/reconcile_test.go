package ovnchassis

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/metaproxy/metaproxy/pkg/ovnmeta"
	"github.com/metaproxy/metaproxy/pkg/ovnports"
	"github.com/metaproxy/metaproxy/pkg/ovsctl"
)

const (
	netA = "aaaaaaaa-0000-4000-8000-00000000000a"
	netB = "bbbbbbbb-0000-4000-8000-00000000000b"
	netC = "cccccccc-0000-4000-8000-00000000000c"
	netD = "dddddddd-0000-4000-8000-00000000000d"
)

type fakeNeutron struct {
	nets     []string
	ports    map[string]ovnports.MetadataPort
	prefixes map[string]netip.Prefix
	known    bool
	err      error
	calls    []string
}

func (f *fakeNeutron) VMNetworks(_ context.Context, host string) ([]string, error) {
	f.calls = append(f.calls, "VMNetworks "+host)
	return f.nets, f.err
}

func (f *fakeNeutron) MetadataPorts(_ context.Context, nets []string) (map[string]ovnports.MetadataPort, error) {
	f.calls = append(f.calls, "MetadataPorts "+strings.Join(nets, ","))
	return f.ports, nil
}

func (f *fakeNeutron) SubnetPrefixes(_ context.Context, nets []string) (map[string]netip.Prefix, error) {
	f.calls = append(f.calls, "SubnetPrefixes "+strings.Join(nets, ","))
	return f.prefixes, nil
}

func (f *fakeNeutron) HostHasChassis(_ context.Context, host string) (bool, error) {
	f.calls = append(f.calls, "HostHasChassis "+host)
	return f.known, nil
}

type fakeNamespaces struct {
	present  []string
	ensured  []ovnmeta.Network
	removed  []string
	failOn   string
	switches int
}

func (f *fakeNamespaces) Namespaces() ([]string, error) {
	return append([]string(nil), f.present...), nil
}

func (f *fakeNamespaces) Ensure(_ context.Context, _ ovsctl.State, n ovnmeta.Network) (bool, error) {
	if n.ID == f.failOn {
		return false, errors.New("ensure failed")
	}
	f.ensured = append(f.ensured, n)
	if !slices.Contains(f.present, n.ID) {
		f.present = append(f.present, n.ID)
		return true, nil
	}
	return false, nil
}

func (f *fakeNamespaces) Remove(_ context.Context, id string) error {
	f.removed = append(f.removed, id)
	f.present = slices.DeleteFunc(f.present, func(s string) bool { return s == id })
	return nil
}

func (f *fakeNamespaces) State(context.Context) (ovsctl.State, error) {
	f.switches++
	return ovsctl.State{}, nil
}

func mac(b byte) net.HardwareAddr { return net.HardwareAddr{0xfa, 0x16, 0x3e, 0, 0, b} }

func port(net, id string, b byte, ips ...string) ovnports.MetadataPort {
	mp := ovnports.MetadataPort{NetworkID: net, ID: id, MAC: mac(b)}
	for _, ip := range ips {
		mp.IPv4 = append(mp.IPv4, ovnports.FixedIP{Addr: netip.MustParseAddr(ip), SubnetID: "sub-" + net})
	}
	return mp
}

func newReconciler(n *fakeNeutron, ns *fakeNamespaces) *Reconciler {
	return &Reconciler{Host: "compute-1", Neutron: n, Namespaces: ns, Switch: ns, Interval: time.Second}
}

func TestReconcileProvisionsWantedAndRemovesStale(t *testing.T) {
	n := &fakeNeutron{
		nets: []string{netA, netB, netC, netD},
		ports: map[string]ovnports.MetadataPort{
			netA: port(netA, "mp-a", 1, "10.0.0.2"),
			netB: port(netB, "mp-b", 2, "10.0.0.2"),
			netD: port(netD, "mp-d", 4), // no IPv4 address: not served, as the agent
			// netC has no metadata port at all
		},
		prefixes: map[string]netip.Prefix{"sub-" + netA: netip.MustParsePrefix("10.0.0.0/24"), "sub-" + netB: netip.MustParsePrefix("10.0.0.0/24")},
	}
	ns := &fakeNamespaces{present: []string{netA, netC, netD}}
	r := newReconciler(n, ns)
	if err := r.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ns.removed)
	if diff := cmp.Diff([]string{netC, netD}, ns.removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	want := []ovnmeta.Network{
		{ID: netA, PortID: "mp-a", MAC: mac(1), Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}},
		{ID: netB, PortID: "mp-b", MAC: mac(2), Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}},
	}
	if diff := cmp.Diff(want, ns.ensured, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("ensured (-want +got):\n%s", diff)
	}
	if !r.Ready() || r.Served() != 2 || r.Passes() != 1 || r.Failures() != 0 {
		t.Errorf("ready %v served %d passes %d failures %d", r.Ready(), r.Served(), r.Passes(), r.Failures())
	}
	// The subnets are asked for only for networks with a metadata port.
	if !slices.Contains(n.calls, "SubnetPrefixes "+netA+","+netB+","+netD) {
		t.Errorf("calls: %v", n.calls)
	}
}

func TestReconcileChangesNothingWhenNeutronFails(t *testing.T) {
	n := &fakeNeutron{err: errors.New("connection refused")}
	ns := &fakeNamespaces{present: []string{netA, netB}}
	r := newReconciler(n, ns)
	if err := r.Once(context.Background()); err == nil || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("error %v", err)
	}
	if len(ns.removed)+len(ns.ensured)+ns.switches != 0 {
		t.Errorf("touched namespaces: removed %v ensured %v", ns.removed, ns.ensured)
	}
	if r.Ready() || r.Failures() != 1 {
		t.Errorf("ready %v failures %d", r.Ready(), r.Failures())
	}
}

func TestReconcileChecksTheHostBeforeRemovingEverything(t *testing.T) {
	n := &fakeNeutron{known: false}
	ns := &fakeNamespaces{present: []string{netA, netB}}
	r := newReconciler(n, ns)
	err := r.Once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no ovn-controller agent") {
		t.Fatalf("error %v", err)
	}
	if len(ns.removed) != 0 {
		t.Errorf("removed %v with an unknown host", ns.removed)
	}
	// The host is Neutron's: the last VMs left, the namespaces go.
	n.known = true
	if err := r.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(ns.present) != 0 || r.Served() != 0 || !r.Ready() {
		t.Errorf("present %v served %d", ns.present, r.Served())
	}
	// Nothing present and nothing wanted: no need to ask.
	calls := len(n.calls)
	if err := r.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(n.calls[calls:], "HostHasChassis compute-1") {
		t.Errorf("asked for the host with nothing to remove: %v", n.calls[calls:])
	}
}

func TestReconcileGoesOnPastOneBadNetwork(t *testing.T) {
	n := &fakeNeutron{nets: []string{netA, netB},
		ports:    map[string]ovnports.MetadataPort{netA: port(netA, "mp-a", 1, "10.0.0.2"), netB: port(netB, "mp-b", 2, "10.0.0.2")},
		prefixes: map[string]netip.Prefix{"sub-" + netA: netip.MustParsePrefix("10.0.0.0/24"), "sub-" + netB: netip.MustParsePrefix("10.0.0.0/24")}}
	ns := &fakeNamespaces{failOn: netA}
	r := newReconciler(n, ns)
	if err := r.Once(context.Background()); err == nil {
		t.Fatal("no error")
	}
	if len(ns.ensured) != 1 || ns.ensured[0].ID != netB || r.Served() != 1 || r.Ready() {
		t.Errorf("ensured %v served %d ready %v", ns.ensured, r.Served(), r.Ready())
	}
}

func TestRunRefusesShortIntervals(t *testing.T) {
	r := &Reconciler{Interval: time.Millisecond}
	if err := r.Run(context.Background()); err == nil {
		t.Error("accepted a 1ms interval")
	}
	rep := &Reporter{Interval: 0}
	if err := rep.Run(context.Background()); err == nil {
		t.Error("accepted a zero report interval")
	}
}
