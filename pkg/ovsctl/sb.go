package ovsctl

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// SBOptions select the OVN Southbound database and how to reach it, as neutron's [ovn]
// ovn_sb_connection, ovn_sb_private_key, ovn_sb_certificate and ovn_sb_ca_cert do for the agent.
type SBOptions struct {
	// DB is the remote (--db), e.g. ssl:10.0.0.10:6642 or unix:/var/run/ovn/ovnsb_db.sock. Required.
	DB string
	// PrivateKey, Certificate and CACert are the client's TLS files for an ssl: remote.
	PrivateKey, Certificate, CACert string
	// Path is the ovn-sbctl program; empty: "ovn-sbctl" from PATH.
	Path string
	// Timeout bounds each command; zero: DefaultTimeout.
	Timeout time.Duration
}

// SB runs ovn-sbctl against one Southbound database. Reads may be answered by any cluster member
// (--no-leader-only), as the agent's connection does.
type SB struct {
	t tool
}

// NewSB returns an SB that runs ovn-sbctl with o.
func NewSB(o SBOptions) *SB {
	opts := []string{"--db=" + o.DB, "--no-leader-only"}
	for _, f := range [][2]string{{"--private-key", o.PrivateKey}, {"--certificate", o.Certificate}, {"--ca-cert", o.CACert}} {
		if f[1] != "" {
			opts = append(opts, f[0]+"="+f[1])
		}
	}
	return &SB{t: newTool(o.Path, "ovn-sbctl", opts, o.Timeout)}
}

// NbCfg returns SB_Global's nb_cfg: the sequence number ovn-northd copies from the Northbound
// database, which neutron-server bumps to ask every agent whether it is alive.
func (s *SB) NbCfg(ctx context.Context) (int64, error) {
	out, err := s.t.run(ctx, "--format=json", "--columns=nb_cfg", "list", "SB_Global")
	if err != nil {
		return 0, err
	}
	rs, err := rows(out)
	if err != nil {
		return 0, err
	}
	if len(rs) != 1 {
		return 0, fmt.Errorf("SB_Global has %d records, want 1", len(rs))
	}
	return atomInt(rs[0]["nb_cfg"])
}

// ExternalIDs returns the external_ids of the record named name in table (e.g. Chassis_Private);
// a missing record is ErrNotFound.
func (s *SB) ExternalIDs(ctx context.Context, table, name string) (map[string]string, error) {
	out, err := s.t.run(ctx, "--format=json", "--columns=external_ids", "find", table, "name="+quote(name))
	if err != nil {
		return nil, err
	}
	rs, err := rows(out)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("%s %s: %w", table, name, ErrNotFound)
	}
	return atomMap(rs[0]["external_ids"])
}

// SetExternalIDs sets the given keys of a record's external_ids, keeping the others.
func (s *SB) SetExternalIDs(ctx context.Context, table, name string, kv map[string]string) error {
	if len(kv) == 0 {
		return nil
	}
	args := []string{"set", table, name}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, mapEntry("external_ids", k, kv[k]))
	}
	if _, err := s.t.run(ctx, args...); err != nil {
		return fmt.Errorf("set external_ids of %s %s: %w", table, name, err)
	}
	return nil
}

// RemoveExternalIDs removes keys from a record's external_ids; absent keys are not an error.
func (s *SB) RemoveExternalIDs(ctx context.Context, table, name string, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	args := []string{"remove", table, name, "external_ids"}
	for _, k := range keys {
		args = append(args, quote(k))
	}
	if _, err := s.t.run(ctx, args...); err != nil {
		return fmt.Errorf("remove external_ids of %s %s: %w", table, name, err)
	}
	return nil
}
