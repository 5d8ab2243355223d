package ovsctl_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/metaproxy/metaproxy/pkg/ovsctl"
	"github.com/metaproxy/metaproxy/pkg/ovsctl/ovsctltest"
)

func TestOVSExternalIDs(t *testing.T) {
	db := ovsctltest.OpenVSwitch(t)
	ovsctltest.Run(t, "ovs-vsctl", "--db="+db, "--no-wait", "set", "Open_vSwitch", ".",
		"external_ids:system-id=chassis-1", `external_ids:hostname="compute 1"`, "external_ids:ovn-remote=ssl:10.0.0.1:6642")
	got, err := ovsctl.NewOVS(ovsctl.OVSOptions{DB: db}).ExternalIDs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"system-id": "chassis-1", "hostname": "compute 1", "ovn-remote": "ssl:10.0.0.1:6642"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("external_ids (-want +got):\n%s", diff)
	}
}

func TestOVSPlugAndState(t *testing.T) {
	db := ovsctltest.OpenVSwitch(t)
	vsctl := func(args ...string) {
		ovsctltest.Run(t, "ovs-vsctl", append([]string{"--db=" + db, "--no-wait"}, args...)...)
	}
	vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev")
	vsctl("add-br", "br-ex")
	// The port starts on the wrong bridge, with an external id of someone else's that must stay.
	vsctl("add-port", "br-ex", "tapabc0", "--", "set", "Interface", "tapabc0", "external_ids:attached-mac=fa:16:3e:00:00:01")
	ctx := context.Background()
	o := ovsctl.NewOVS(ovsctl.OVSOptions{DB: db, Timeout: 5 * time.Second})

	st, err := o.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"br-ex", "br-int"}, st.BridgeNames()); diff != "" {
		t.Errorf("bridges (-want +got):\n%s", diff)
	}
	if dp := st.Bridges["br-int"].DatapathType; dp != "netdev" {
		t.Errorf("br-int datapath_type %q, want netdev", dp)
	}
	if p := st.Ports["tapabc0"]; p.Bridge != "br-ex" {
		t.Errorf("tapabc0 before: %+v, want on br-ex", p)
	}

	// On another bridge: plugging it is refused until it is unplugged there.
	if err := o.PlugPort(ctx, "br-int", "tapabc0", map[string]string{"iface-id": "port-1"}); err == nil {
		t.Error("PlugPort moved a port from another bridge")
	}
	if err := o.UnplugPort(ctx, "tapabc0"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time changes nothing
		if err := o.PlugPort(ctx, "br-int", "tapabc0", map[string]string{"iface-id": "port-1"}); err != nil {
			t.Fatal(err)
		}
		st, err = o.State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := ovsctl.Port{Name: "tapabc0", Bridge: "br-int", ExternalIDs: map[string]string{"iface-id": "port-1"}}
		if diff := cmp.Diff(want, st.Ports["tapabc0"]); diff != "" {
			t.Errorf("after PlugPort (-want +got):\n%s", diff)
		}
	}
	// Keys set by others stay when the port is plugged again.
	vsctl("set", "Interface", "tapabc0", "external_ids:attached-mac=fa:16:3e:00:00:01")
	if err := o.PlugPort(ctx, "br-int", "tapabc0", map[string]string{"iface-id": "port-2"}); err != nil {
		t.Fatal(err)
	}
	if st, err = o.State(ctx); err != nil {
		t.Fatal(err)
	}
	want := ovsctl.Port{Name: "tapabc0", Bridge: "br-int", ExternalIDs: map[string]string{"iface-id": "port-2", "attached-mac": "fa:16:3e:00:00:01"}}
	if diff := cmp.Diff(want, st.Ports["tapabc0"]); diff != "" {
		t.Errorf("after a second PlugPort (-want +got):\n%s", diff)
	}

	if err := o.UnplugPort(ctx, "tapabc0"); err != nil {
		t.Fatal(err)
	}
	if err := o.UnplugPort(ctx, "tapabc0"); err != nil {
		t.Errorf("unplugging a missing port: %v", err)
	}
	if st, err = o.State(ctx); err != nil {
		t.Fatal(err)
	}
	if p, ok := st.Ports["tapabc0"]; ok {
		t.Errorf("tapabc0 still there: %+v", p)
	}
}

func TestSBExternalIDs(t *testing.T) {
	db := ovsctltest.Southbound(t)
	ovsctltest.Run(t, "ovn-sbctl", "--db="+db, "create", "Chassis_Private", "name=chassis-1")
	ctx := context.Background()
	sb := ovsctl.NewSB(ovsctl.SBOptions{DB: db})

	if n, err := sb.NbCfg(ctx); err != nil || n != 0 {
		t.Fatalf("nb_cfg = %d, %v; want 0", n, err)
	}
	ovsctltest.Run(t, "ovn-sbctl", "--db="+db, "set", "SB_Global", ".", "nb_cfg=42")
	if n, err := sb.NbCfg(ctx); err != nil || n != 42 {
		t.Fatalf("nb_cfg = %d, %v; want 42", n, err)
	}

	set := map[string]string{"neutron:ovn-metadata-id": "a3e9c7b2-0000-5000-8000-000000000001", "neutron:description-metadata": `metaproxy "chassis" = 1`}
	if err := sb.SetExternalIDs(ctx, "Chassis_Private", "chassis-1", set); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetExternalIDs(ctx, "Chassis_Private", "chassis-1", map[string]string{"neutron:ovn-metadata-sb-cfg": "42"}); err != nil {
		t.Fatal(err)
	}
	got, err := sb.ExternalIDs(ctx, "Chassis_Private", "chassis-1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"neutron:ovn-metadata-id": set["neutron:ovn-metadata-id"], "neutron:description-metadata": set["neutron:description-metadata"], "neutron:ovn-metadata-sb-cfg": "42"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("external_ids (-want +got):\n%s", diff)
	}
	if err := sb.RemoveExternalIDs(ctx, "Chassis_Private", "chassis-1", "neutron:description-metadata", "absent"); err != nil {
		t.Fatal(err)
	}
	if got, err = sb.ExternalIDs(ctx, "Chassis_Private", "chassis-1"); err != nil {
		t.Fatal(err)
	}
	delete(want, "neutron:description-metadata")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after remove (-want +got):\n%s", diff)
	}

	if _, err := sb.ExternalIDs(ctx, "Chassis_Private", "chassis-2"); !errors.Is(err, ovsctl.ErrNotFound) {
		t.Errorf("missing chassis: %v, want ErrNotFound", err)
	}
	if err := sb.SetExternalIDs(ctx, "Chassis_Private", "chassis-2", map[string]string{"k": "v"}); !errors.Is(err, ovsctl.ErrNotFound) {
		t.Errorf("set on a missing chassis: %v, want ErrNotFound", err)
	}
}

func TestUnreachableDatabaseFailsWithinTimeout(t *testing.T) {
	ovsctltest.OpenVSwitch(t) // skips without the tools
	o := ovsctl.NewOVS(ovsctl.OVSOptions{DB: "unix:" + t.TempDir() + "/none.sock", Timeout: time.Second})
	_, err := o.ExternalIDs(context.Background())
	if err == nil {
		t.Fatal("no error from a database that does not exist")
	}
	t.Log(err)
}
