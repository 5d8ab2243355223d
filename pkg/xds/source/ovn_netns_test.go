package source

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// On an ML2/OVN chassis the namespaces are ovnmeta-<network> (xds chassis or
// neutron-ovn-metadata-agent make them): each is a network, served like a qdhcp- one.
func TestNamespacesServeOVNMetadataNamespaces(t *testing.T) {
	ovn, dhcp := uuid(t), uuid(t)
	addNetns(t, "ovnmeta-"+ovn)
	addNetns(t, "qdhcp-"+dhcp)
	addNetns(t, "ovnmeta-not-a-uuid")
	s, err := NewNamespaces("/run/netns", "chassis-1", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := s.Networks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Network{}
	for _, n := range nodes["chassis-1"] {
		got[n.ID] = n
	}
	if diff := cmp.Diff(Network{Kind: resolve.KindNetwork, ID: ovn, NamespacePath: "/run/netns/ovnmeta-" + ovn}, got[ovn]); diff != "" {
		t.Errorf("ovnmeta network (-want +got):\n%s", diff)
	}
	if got[dhcp].NamespacePath != "/run/netns/qdhcp-"+dhcp {
		t.Errorf("qdhcp network beside it: %+v", got[dhcp])
	}
	if _, ok := got["not-a-uuid"]; ok {
		t.Error("served ovnmeta-not-a-uuid")
	}
}
