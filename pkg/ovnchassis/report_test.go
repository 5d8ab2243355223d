package ovnchassis

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/ovsctl"
	"github.com/metaproxy/metaproxy/pkg/ovsctl/ovsctltest"
)

func TestAgentIDIsTheAgents(t *testing.T) {
	// Computed with neutron's own code (agent.py: uuid.uuid5(chassis_id, 'metadata_agent')).
	for chassis, want := range map[string]string{
		"ovnlab-chassis":                       "9841e47c-a0b7-5672-b30d-3a53ad6a53c7",
		"6a0f5a3b-1bfe-4c3d-9a5c-2f0c2f6f0d11": "a3768296-6949-5d55-9cc7-e26d2015ed42",
	} {
		if got := AgentID(chassis); got != want {
			t.Errorf("AgentID(%q) = %s, want %s", chassis, got, want)
		}
	}
}

func TestReporterOnARealSouthbound(t *testing.T) {
	db := ovsctltest.Southbound(t)
	sbctl := func(args ...string) string {
		return ovsctltest.Run(t, "ovn-sbctl", append([]string{"--db=" + db}, args...)...)
	}
	sb := ovsctl.NewSB(ovsctl.SBOptions{DB: db})
	ctx := context.Background()
	r := &Reporter{Chassis: "compute-1", SB: sb, Description: "metaproxy xds chassis", Interval: time.Second}

	if err := r.Once(ctx); !errors.Is(err, ovsctl.ErrNotFound) {
		t.Fatalf("before ovn-controller registered the chassis: %v, want ErrNotFound", err)
	}
	sbctl("create", "Chassis_Private", "name=compute-1")
	sbctl("set", "SB_Global", ".", "nb_cfg=7")
	if err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	ids, err := sb.ExternalIDs(ctx, "Chassis_Private", "compute-1")
	if err != nil {
		t.Fatal(err)
	}
	if ids[KeyAgentID] != AgentID("compute-1") || ids[KeySBCfg] != "7" || ids[KeyDescription] != "metaproxy xds chassis" {
		t.Errorf("external_ids after the first report: %v", ids)
	}

	// neutron-server bumps nb_cfg (ovn-northd copies it to SB_Global); the next check answers it.
	sbctl("set", "SB_Global", ".", "nb_cfg=8")
	if err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ = sb.ExternalIDs(ctx, "Chassis_Private", "compute-1"); ids[KeySBCfg] != "8" {
		t.Errorf("sb-cfg %q after the bump, want 8", ids[KeySBCfg])
	}
	if r.Reports() != 2 {
		t.Errorf("reports %d, want 2", r.Reports())
	}

	// An id registered before (by the agent, maybe a random one from an old release) is kept.
	sbctl("set", "Chassis_Private", "compute-1", `external_ids:"neutron:ovn-metadata-id"="0d3c7b3e-0000-4000-8000-000000000001"`)
	if err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ = sb.ExternalIDs(ctx, "Chassis_Private", "compute-1"); ids[KeyAgentID] != "0d3c7b3e-0000-4000-8000-000000000001" {
		t.Errorf("agent id overwritten: %v", ids)
	}

	// Run until stopped: the description goes, the id and the last nb_cfg stay.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- r.Run(runCtx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ids, _ = sb.ExternalIDs(ctx, "Chassis_Private", "compute-1")
	if _, ok := ids[KeyDescription]; ok || ids[KeySBCfg] != "8" || ids[KeyAgentID] == "" {
		t.Errorf("external_ids after stopping: %v", ids)
	}
}
