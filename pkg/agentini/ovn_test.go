package agentini

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOVN(t *testing.T) {
	path := filepath.Join(t.TempDir(), "neutron_ovn_metadata_agent.ini")
	body := `[DEFAULT]
metadata_proxy_shared_secret = s3cr3t
nova_metadata_host = 10.0.0.10
[ovs]
ovsdb_connection = unix:/var/run/openvswitch/db.sock
[ovn]
ovn_sb_connection = ssl:10.0.0.1:6642,ssl:10.0.0.2:6642
ovn_sb_private_key = /etc/neutron/ovn/key.pem
ovn_sb_certificate = /etc/neutron/ovn/cert.pem
ovn_sb_ca_cert = /etc/neutron/ovn/ca.pem
`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadOVN(path)
	if err != nil {
		t.Fatal(err)
	}
	want := OVNConnections{OVSDB: "unix:/var/run/openvswitch/db.sock", SB: "ssl:10.0.0.1:6642,ssl:10.0.0.2:6642",
		SBPrivateKey: "/etc/neutron/ovn/key.pem", SBCertificate: "/etc/neutron/ovn/cert.pem", SBCACert: "/etc/neutron/ovn/ca.pem"}
	if c != want {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	// The same file serves cmd/extproc and cmd/xds (Load): the [DEFAULT] options are shared.
	s, err := Load(path)
	if err != nil || s.SharedSecret != "s3cr3t" || s.Nova.Host != "10.0.0.10" {
		t.Errorf("Load: %+v, %v", s, err)
	}
	if c, err := LoadOVN(filepath.Join(t.TempDir(), "none.ini")); err == nil {
		t.Errorf("a missing file read as %+v", c)
	}
	empty := filepath.Join(t.TempDir(), "empty.ini")
	os.WriteFile(empty, nil, 0o600)
	if c, err := LoadOVN(empty); err != nil || c != (OVNConnections{}) {
		t.Errorf("empty file: %+v, %v", c, err)
	}
}
