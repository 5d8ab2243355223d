package agentini

import (
	"fmt"
	"strings"

	"gopkg.in/ini.v1"
)

// OVNConnections are the database settings of neutron-ovn-metadata-agent's
// neutron_ovn_metadata_agent.ini (its [DEFAULT] nova and secret options are the same as
// metadata_agent.ini's, read by Load). Each field is empty when the file does not set it, so that
// the caller's own default (the local socket, ovn-controller's ovn-remote) applies rather than
// neutron's TCP ones.
type OVNConnections struct {
	OVSDB         string // [ovs] ovsdb_connection
	SB            string // [ovn] ovn_sb_connection
	SBPrivateKey  string // [ovn] ovn_sb_private_key
	SBCertificate string // [ovn] ovn_sb_certificate
	SBCACert      string // [ovn] ovn_sb_ca_cert
}

// LoadOVN reads the database settings of a neutron_ovn_metadata_agent.ini.
func LoadOVN(path string) (OVNConnections, error) {
	f, err := ini.LoadSources(ini.LoadOptions{AllowBooleanKeys: true, IgnoreInlineComment: true}, path)
	if err != nil {
		return OVNConnections{}, fmt.Errorf("read OVN metadata agent config %s: %w", path, err)
	}
	get := func(section, key string) string { return strings.TrimSpace(f.Section(section).Key(key).String()) }
	return OVNConnections{
		OVSDB:         get("ovs", "ovsdb_connection"),
		SB:            get("ovn", "ovn_sb_connection"),
		SBPrivateKey:  get("ovn", "ovn_sb_private_key"),
		SBCertificate: get("ovn", "ovn_sb_certificate"),
		SBCACert:      get("ovn", "ovn_sb_ca_cert"),
	}, nil
}
