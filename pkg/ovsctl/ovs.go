package ovsctl

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// DefaultOVSDB is where ovs-vsctl finds the local Open_vSwitch database when none is given.
const DefaultOVSDB = "unix:/var/run/openvswitch/db.sock"

// OVS runs ovs-vsctl against one Open_vSwitch database.
type OVS struct {
	t tool
}

// OVSOptions configure NewOVS.
type OVSOptions struct {
	// DB is the database remote (--db), e.g. unix:/var/run/openvswitch/db.sock; empty: ovs-vsctl's
	// default (DefaultOVSDB).
	DB string
	// Path is the ovs-vsctl program; empty: "ovs-vsctl" from PATH.
	Path string
	// Timeout bounds each command; zero: DefaultTimeout.
	Timeout time.Duration
}

// NewOVS returns an OVS that runs ovs-vsctl with o.
func NewOVS(o OVSOptions) *OVS {
	opts := []string{"--no-wait"}
	if o.DB != "" {
		opts = append(opts, "--db="+o.DB)
	}
	return &OVS{t: newTool(o.Path, "ovs-vsctl", opts, o.Timeout)}
}

// ExternalIDs returns the external_ids of the Open_vSwitch record: where ovn-controller reads
// system-id (the chassis name), hostname, ovn-bridge and ovn-remote.
func (o *OVS) ExternalIDs(ctx context.Context) (map[string]string, error) {
	out, err := o.t.run(ctx, "--format=json", "--columns=external_ids", "list", "Open_vSwitch")
	if err != nil {
		return nil, err
	}
	rs, err := rows(out)
	if err != nil {
		return nil, err
	}
	if len(rs) != 1 {
		return nil, fmt.Errorf("open_vswitch table has %d records, want 1 (run ovs-vsctl init)", len(rs))
	}
	return atomMap(rs[0]["external_ids"])
}

// Bridge is an OVS bridge as State reports it.
type Bridge struct {
	Name string
	// DatapathType is "" or "system" for the kernel datapath, "netdev" for the userspace one.
	DatapathType string
}

// State is a snapshot of the bridges and ports of the switch, read in one ovs-vsctl run.
type State struct {
	Bridges map[string]Bridge
	// Ports maps a port name to the port; only ports that are on a bridge are listed, with the
	// external_ids of their interface of the same name.
	Ports map[string]Port
}

// BridgeNames returns the names of all bridges, sorted.
func (s State) BridgeNames() []string {
	names := make([]string, 0, len(s.Bridges))
	for n := range s.Bridges {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// State reads every bridge (name, datapath_type), every port on a bridge and the external_ids of
// the ports' interfaces.
func (o *OVS) State(ctx context.Context) (State, error) {
	out, err := o.t.run(ctx, "--format=json",
		"--", "--columns=name,datapath_type,ports", "list", "Bridge",
		"--", "--columns=_uuid,name", "list", "Port",
		"--", "--columns=name,external_ids", "list", "Interface")
	if err != nil {
		return State{}, err
	}
	tables, err := tablesOf(out, 3)
	if err != nil {
		return State{}, err
	}
	st := State{Bridges: map[string]Bridge{}, Ports: map[string]Port{}}
	portBridge := map[string]string{} // port uuid -> bridge name
	for _, r := range tables[0] {
		name, err := atomString(r["name"])
		if err != nil {
			return State{}, err
		}
		dp, err := atomString(r["datapath_type"])
		if err != nil {
			return State{}, err
		}
		ports, err := atomSet(r["ports"])
		if err != nil {
			return State{}, err
		}
		st.Bridges[name] = Bridge{Name: name, DatapathType: dp}
		for _, p := range ports {
			portBridge[p] = name
		}
	}
	ifaceIDs := map[string]map[string]string{}
	for _, r := range tables[2] {
		name, err := atomString(r["name"])
		if err != nil {
			return State{}, err
		}
		if ifaceIDs[name], err = atomMap(r["external_ids"]); err != nil {
			return State{}, err
		}
	}
	for _, r := range tables[1] {
		id, err := atomString(r["_uuid"])
		if err != nil {
			return State{}, err
		}
		name, err := atomString(r["name"])
		if err != nil {
			return State{}, err
		}
		if br, ok := portBridge[id]; ok {
			st.Ports[name] = Port{Name: name, Bridge: br, ExternalIDs: ifaceIDs[name]}
		}
	}
	return st, nil
}

// Port is an OVS port (with its interface of the same name) as PlugPort leaves it.
type Port struct {
	Name string
	// Bridge is the bridge the port is on.
	Bridge string
	// ExternalIDs are the external_ids of the port's interface (iface-id, ...).
	ExternalIDs map[string]string
}

// PlugPort makes port a port of bridge (unless it is one already) whose interface carries
// externalIDs, other keys of the interface's external_ids kept, in one transaction. A port that is
// on another bridge is an error: UnplugPort it first. Like neutron's agents, it does not wait for
// ovs-vswitchd.
func (o *OVS) PlugPort(ctx context.Context, bridge, port string, externalIDs map[string]string) error {
	args := []string{"--may-exist", "add-port", bridge, port}
	if len(externalIDs) > 0 {
		args = append(args, "--", "set", "Interface", port)
		keys := make([]string, 0, len(externalIDs))
		for k := range externalIDs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			args = append(args, mapEntry("external_ids", k, externalIDs[k]))
		}
	}
	if _, err := o.t.run(ctx, args...); err != nil {
		return fmt.Errorf("plug %s into %s: %w", port, bridge, err)
	}
	return nil
}

// UnplugPort removes port from whatever bridge it is on; a port that does not exist is not an error.
func (o *OVS) UnplugPort(ctx context.Context, port string) error {
	if _, err := o.t.run(ctx, "--if-exists", "del-port", port); err != nil {
		return fmt.Errorf("unplug %s: %w", port, err)
	}
	return nil
}
