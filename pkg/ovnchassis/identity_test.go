package ovnchassis

import (
	"context"
	"os"
	"strings"
	"testing"
)

type fakeIDs map[string]string

func (f fakeIDs) ExternalIDs(context.Context) (map[string]string, error) { return f, nil }

func TestReadIdentity(t *testing.T) {
	ctx := context.Background()
	id, err := ReadIdentity(ctx, fakeIDs{"system-id": "ch-1", "hostname": "compute-1", "ovn-bridge": "br-ovn", "ovn-remote": "ssl:10.0.0.1:6642"}, Identity{})
	if err != nil {
		t.Fatal(err)
	}
	if id != (Identity{Chassis: "ch-1", Host: "compute-1", Bridge: "br-ovn", SBRemote: "ssl:10.0.0.1:6642"}) {
		t.Errorf("identity %+v", id)
	}
	// Defaults: the host name and br-int; overrides win.
	id, err = ReadIdentity(ctx, fakeIDs{"system-id": "ch-1", "ovn-remote": "tcp:10.0.0.1:6642"}, Identity{SBRemote: "unix:/run/ovn/sb.sock"})
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if id.Host != host || id.Bridge != "br-int" || id.SBRemote != "unix:/run/ovn/sb.sock" {
		t.Errorf("identity %+v", id)
	}
	_, err = ReadIdentity(ctx, fakeIDs{}, Identity{})
	if err == nil || !strings.Contains(err.Error(), "system-id") || !strings.Contains(err.Error(), "ovn-remote") {
		t.Errorf("error %v, want both missing keys named", err)
	}
}
