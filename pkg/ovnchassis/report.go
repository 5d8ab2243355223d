package ovnchassis

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"
)

// External_ids keys on Chassis_Private that neutron-server reads for the OVN metadata agent
// (neutron/common/ovn/constants.py).
const (
	KeyAgentID     = "neutron:ovn-metadata-id"
	KeySBCfg       = "neutron:ovn-metadata-sb-cfg"
	KeyDescription = "neutron:description-metadata"
)

// chassisPrivate is the table the agent reports in (OVN 20.09 and later).
const chassisPrivate = "Chassis_Private"

// Southbound is what the reporter reads and writes (*ovsctl.SB).
type Southbound interface {
	NbCfg(ctx context.Context) (int64, error)
	ExternalIDs(ctx context.Context, table, name string) (map[string]string, error)
	SetExternalIDs(ctx context.Context, table, name string, kv map[string]string) error
	RemoveExternalIDs(ctx context.Context, table, name string, keys ...string) error
}

// Reporter keeps the chassis's OVN metadata agent alive in Neutron's eyes.
type Reporter struct {
	Chassis string
	SB      Southbound
	// Description is written to neutron:description-metadata while the reporter runs (shown as
	// the agent's description); empty: none written.
	Description string
	// Interval between checks of nb_cfg (at least one second). Neutron's agent_down_time is 75 s by
	// default and it bumps nb_cfg at most every agent_down_time/2 when agents are listed.
	Interval time.Duration
	Log      *slog.Logger

	registered atomic.Bool // a write succeeded: there is a description to remove at the end
	reports    atomic.Int64
	failures   atomic.Int64
}

// Reports returns how many nb_cfg values were written; Failures how many checks failed.
func (r *Reporter) Reports() int64  { return r.reports.Load() }
func (r *Reporter) Failures() int64 { return r.failures.Load() }

func (r *Reporter) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Run checks at once and then every Interval until ctx is done. It then removes the description
// it wrote (with a short deadline of its own) and returns nil.
func (r *Reporter) Run(ctx context.Context) error {
	err := every(ctx, r.Interval, "report", r.Once, func(err error) {
		r.log().Warn("agent report to the Southbound database failed", "chassis", r.Chassis, "error", err)
	})
	if err == nil {
		r.unregister()
	}
	return err
}

// Once brings the chassis's Chassis_Private record up to date: the agent id if it is missing,
// the description, and SB_Global's nb_cfg as neutron:ovn-metadata-sb-cfg. It reads both records
// every time, so that a record ovn-controller recreated gets registered again. A chassis that
// ovn-controller has not registered yet is an error (retried on the next check).
func (r *Reporter) Once(ctx context.Context) error {
	if err := r.once(ctx); err != nil {
		r.failures.Add(1)
		return err
	}
	return nil
}

func (r *Reporter) once(ctx context.Context) error {
	ids, err := r.SB.ExternalIDs(ctx, chassisPrivate, r.Chassis)
	if err != nil {
		return fmt.Errorf("read %s %s (has ovn-controller registered the chassis?): %w", chassisPrivate, r.Chassis, err)
	}
	nb, err := r.SB.NbCfg(ctx)
	if err != nil {
		return err
	}
	set := map[string]string{}
	// As the agent's db_add: an id already there (the agent's, or ours) is kept.
	if ids[KeyAgentID] == "" {
		set[KeyAgentID] = AgentID(r.Chassis)
	}
	if r.Description != "" && ids[KeyDescription] != r.Description {
		set[KeyDescription] = r.Description
	}
	if cfg := strconv.FormatInt(nb, 10); ids[KeySBCfg] != cfg {
		set[KeySBCfg] = cfg
	}
	if len(set) == 0 {
		return nil
	}
	if err := r.SB.SetExternalIDs(ctx, chassisPrivate, r.Chassis, set); err != nil {
		return err
	}
	r.registered.Store(true)
	if id, ok := set[KeyAgentID]; ok {
		r.log().Info("registered as the chassis's OVN metadata agent", "chassis", r.Chassis, "agent_id", id)
	}
	if _, ok := set[KeySBCfg]; ok {
		r.reports.Add(1)
	}
	return nil
}

// unregister removes the description, so that an agent started after us is not shown as ours.
// The agent id and the last nb_cfg stay, as the agent leaves them: Neutron then shows the agent
// dead once agent_down_time passes without a report.
func (r *Reporter) unregister() {
	if !r.registered.Load() || r.Description == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.SB.RemoveExternalIDs(ctx, chassisPrivate, r.Chassis, KeyDescription); err != nil {
		r.log().Warn("could not remove the agent description", "chassis", r.Chassis, "error", err)
	}
}
