package ovnchassis

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/google/uuid"
)

// ovnMetadataNamespace is the agent's OVN_METADATA_UUID_NAMESPACE: the uuid5 namespace for chassis
// names that are not UUIDs.
var ovnMetadataNamespace = uuid.MustParse("d34bf9f6-da32-4871-9af8-15a4626b41ab")

// AgentID returns the id neutron-ovn-metadata-agent registers for chassis: uuid5(chassis id,
// "metadata_agent"), the chassis id being the chassis name if it is a UUID, else
// uuid5(OVN_METADATA_UUID_NAMESPACE, name). The same chassis thus keeps the same agent in
// Neutron whichever of the two runs.
func AgentID(chassis string) string {
	id, err := uuid.Parse(chassis)
	if err != nil {
		id = uuid.NewSHA1(ovnMetadataNamespace, []byte(chassis))
	}
	return uuid.NewSHA1(id, []byte("metadata_agent")).String()
}

// Identity is how this chassis is named in OVN and Neutron, and where its OVN pieces are.
type Identity struct {
	// Chassis is the chassis name (Open_vSwitch external_ids:system-id): the Chassis and
	// Chassis_Private records.
	Chassis string
	// Host is the name Neutron binds ports to (binding:host_id): external_ids:hostname, else the
	// host name, as ovn-controller reports it in Chassis.hostname.
	Host string
	// Bridge is the integration bridge (external_ids:ovn-bridge, default br-int).
	Bridge string
	// SBRemote is the Southbound database as ovn-controller reaches it (external_ids:ovn-remote).
	SBRemote string
}

// ExternalIDsReader reads the Open_vSwitch record's external_ids (*ovsctl.OVS).
type ExternalIDsReader interface {
	ExternalIDs(ctx context.Context) (map[string]string, error)
}

// ReadIdentity reads the chassis's identity from the local Open_vSwitch database, as the agent
// does (_get_own_chassis_name, _get_ovn_bridge); values in override win over what is read.
func ReadIdentity(ctx context.Context, ovs ExternalIDsReader, override Identity) (Identity, error) {
	ids, err := ovs.ExternalIDs(ctx)
	if err != nil {
		return Identity{}, fmt.Errorf("read the chassis identity from Open_vSwitch: %w", err)
	}
	id := Identity{Chassis: ids["system-id"], Host: ids["hostname"], Bridge: ids["ovn-bridge"], SBRemote: ids["ovn-remote"]}
	if id.Host == "" {
		if id.Host, err = os.Hostname(); err != nil {
			return Identity{}, fmt.Errorf("host name: %w", err)
		}
	}
	if id.Bridge == "" {
		id.Bridge = "br-int"
	}
	for _, o := range []struct {
		dst *string
		v   string
	}{{&id.Chassis, override.Chassis}, {&id.Host, override.Host},
		{&id.Bridge, override.Bridge}, {&id.SBRemote, override.SBRemote}} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	var errs []error
	if id.Chassis == "" {
		errs = append(errs, errors.New("no chassis name: Open_vSwitch external_ids:system-id is not set (is ovn-controller configured on this host?)"))
	}
	if id.SBRemote == "" {
		errs = append(errs, errors.New("no Southbound database: Open_vSwitch external_ids:ovn-remote is not set; give --ovn-sb-connection"))
	}
	return id, errors.Join(errs...)
}
