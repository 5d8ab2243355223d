package chassiscmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metaproxy/metaproxy/pkg/ovsctl/ovsctltest"
)

func TestHelpAndVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := Main(context.Background(), []string{"--help"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Usage: xds chassis", "neutron-ovn-metadata-agent", "-ovn-sb-connection", "-interval"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	stdout.Reset()
	if err := Main(context.Background(), []string{"--version"}, &stdout, &stderr); err != nil || !strings.HasPrefix(stdout.String(), "xds chassis ") {
		t.Errorf("--version: %q, %v", stdout.String(), err)
	}
	if err := Main(context.Background(), []string{"extra"}, &stdout, &stderr); err == nil {
		t.Error("a stray argument was accepted")
	}
}

func TestInvalidConfigurationNamesEveryProblem(t *testing.T) {
	err := Main(context.Background(), []string{"--interval", "10ms", "--report-interval", "0s", "--log-format", "yaml",
		"--neutron-url", "http://127.0.0.1:1/", "--os-cloud", "c", "--netns-dir", "relative", "--admin-listen", "nope"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"--interval", "--report-interval", "--log-format", "exclusive", "--netns-dir", "--admin-listen"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

func TestOVNAgentINIFillsWhatFlagsLeaveOut(t *testing.T) {
	ini := filepath.Join(t.TempDir(), "neutron_ovn_metadata_agent.ini")
	os.WriteFile(ini, []byte("[ovs]\novsdb_connection = unix:/from/ini.sock\n[ovn]\novn_sb_connection = ssl:10.0.0.1:6642\novn_sb_private_key = /k\novn_sb_certificate = /c\novn_sb_ca_cert = /ca\n"), 0o600)
	c := Config{OVNMetadataAgentINI: ini, OVSDB: "unix:/from/flag.sock"}
	if err := c.applyINI(); err != nil {
		t.Fatal(err)
	}
	want := SBFlags{Connection: "ssl:10.0.0.1:6642", PrivateKey: "/k", Certificate: "/c", CACert: "/ca"}
	if c.OVSDB != "unix:/from/flag.sock" || c.SB != want {
		t.Errorf("after the ini: OVSDB %q, SB %+v", c.OVSDB, c.SB)
	}
	c = Config{OVNMetadataAgentINI: filepath.Join(t.TempDir(), "missing.ini")}
	if err := c.applyINI(); err == nil {
		t.Error("a missing ini file was accepted")
	}
}

// A Southbound database over ssl (ovn-controller's ovn-remote) without client files is refused
// at start, naming the flags.
func TestSSLSouthboundNeedsItsFiles(t *testing.T) {
	db := ovsctltest.OpenVSwitch(t)
	ovsctltest.Run(t, "ovs-vsctl", "--db="+db, "--no-wait", "set", "Open_vSwitch", ".", "external_ids:system-id=ch-1",
		"external_ids:ovn-remote=ssl:10.0.0.1:6642")
	err := Main(context.Background(), []string{"--ovsdb-connection", db, "--neutron-url", "http://127.0.0.1:1/", "--admin-listen", ""},
		&bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--ovn-sb-private-key") {
		t.Errorf("error %v, want one naming the TLS flags", err)
	}
}
