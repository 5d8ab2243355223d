//go:build e2e

package e2e

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/layer3/routers"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// routerMode resolves VMs behind a router through the real neutron-server, as cmd/extproc does for
// a qrouter- listener: the router's interface networks first (reused for the TTL), then the port.
// A network attached to the router after its networks were listed is found by the re-listing that
// a miss triggers once the list is older than a second.
func routerMode(t *testing.T, ctx context.Context, e *env) {
	n1, err := e.cloud.CreateNetwork(ctx, "net-r1", "10.10.1.0/24")
	if err != nil {
		t.Fatal(err)
	}
	n2, err := e.cloud.CreateNetwork(ctx, "net-r2", "10.10.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	vm1, err := e.cloud.CreateVM(ctx, n1, openstack.VMSpec{Hostname: "vm-r1", IP: "10.10.1.5"})
	if err != nil {
		t.Fatal(err)
	}
	vm2, err := e.cloud.CreateVM(ctx, n2, openstack.VMSpec{Hostname: "vm-r2", IP: "10.10.2.5"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.cloud.CreateRouter(ctx, "router-r", n1)
	if err != nil {
		t.Fatal(err)
	}
	neutron := resolve.NewNeutron(resolve.FixedClient{C: e.extprocClient(t, ctx)}, resolve.NeutronOptions{RouterNetworksTTL: time.Minute})
	behindRouter := func(ip string) (resolve.Instance, error) {
		return neutron.Resolve(ctx, resolve.Query{Scope: resolve.Scope{Kind: resolve.KindRouter, ID: r.ID}, Addr: netip.MustParseAddr(ip)})
	}

	inst, err := behindRouter("10.10.1.5")
	if err != nil || inst.InstanceID != vm1.InstanceID || inst.NetworkID != n1.ID || inst.PortID != vm1.PortID {
		t.Fatalf("VM on the router's network: %+v, %v; want instance %s on %s", inst, err, vm1.InstanceID, n1.ID)
	}
	if inst, err := behindRouter("10.10.2.5"); !errors.Is(err, resolve.ErrNotFound) {
		t.Fatalf("VM on a network the router is not attached to: %+v, %v; want not found", inst, err)
	}
	if _, err := routers.AddInterface(ctx, e.cloud.NetworkClient(), r.ID, routers.AddInterfaceOpts{SubnetID: n2.SubnetID}).Extract(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the cached list of networks is now older than the recheck age
	inst, err = behindRouter("10.10.2.5")
	if err != nil || inst.InstanceID != vm2.InstanceID || inst.NetworkID != n2.ID {
		t.Fatalf("VM on a network attached since: %+v, %v; want instance %s on %s", inst, err, vm2.InstanceID, n2.ID)
	}
	if inst, err := behindRouter("10.10.1.99"); !errors.Is(err, resolve.ErrNotFound) {
		t.Errorf("an address no port owns: %+v, %v; want not found", inst, err)
	}
}
