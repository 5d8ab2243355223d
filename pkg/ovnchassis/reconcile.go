package ovnchassis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/metaproxy/metaproxy/pkg/ovnmeta"
	"github.com/metaproxy/metaproxy/pkg/ovnports"
	"github.com/metaproxy/metaproxy/pkg/ovsctl"
)

// Neutron is what the reconciler asks Neutron (*ovnports.Client).
type Neutron interface {
	VMNetworks(ctx context.Context, host string) ([]string, error)
	MetadataPorts(ctx context.Context, networks []string) (map[string]ovnports.MetadataPort, error)
	SubnetPrefixes(ctx context.Context, networks []string) (map[string]netip.Prefix, error)
	HostHasChassis(ctx context.Context, host string) (bool, error)
}

var _ Neutron = (*ovnports.Client)(nil)

// Namespaces provisions and removes the ovnmeta namespaces (*ovnmeta.Provisioner).
type Namespaces interface {
	Namespaces() ([]string, error)
	Ensure(ctx context.Context, sw ovsctl.State, n ovnmeta.Network) (bool, error)
	Remove(ctx context.Context, networkID string) error
}

var _ Namespaces = (*ovnmeta.Provisioner)(nil)

// SwitchState reads the switch's bridges and ports once per pass (*ovsctl.OVS).
type SwitchState interface {
	State(ctx context.Context) (ovsctl.State, error)
}

// Reconciler keeps the chassis's ovnmeta namespaces equal to what Neutron says.
type Reconciler struct {
	Host       string
	Neutron    Neutron
	Namespaces Namespaces
	Switch     SwitchState
	// Interval between passes (at least one second).
	Interval time.Duration
	// Timeout bounds one pass's Neutron requests together; zero: Interval, at most 30 s.
	Timeout time.Duration
	Log     *slog.Logger

	passes, failures, served atomic.Int64
	lastSuccess              atomic.Int64 // Unix nanoseconds; 0 before the first successful pass
	ready                    atomic.Bool
}

// Passes returns how many passes ran; Failures how many of them failed (Neutron or a namespace).
func (r *Reconciler) Passes() int64   { return r.passes.Load() }
func (r *Reconciler) Failures() int64 { return r.failures.Load() }

// Served returns how many namespaces the last pass left provisioned.
func (r *Reconciler) Served() int64 { return r.served.Load() }

// Ready reports whether a pass has succeeded: every wanted namespace was in place after it.
func (r *Reconciler) Ready() bool { return r.ready.Load() }

// LastSuccess returns when the last successful pass ended (the zero time before one).
func (r *Reconciler) LastSuccess() time.Time {
	if ns := r.lastSuccess.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Run runs a pass at once and then every Interval until ctx is done; it returns nil then.
func (r *Reconciler) Run(ctx context.Context) error {
	return every(ctx, r.Interval, "reconcile", r.Once, func(err error) { r.log().Error("reconcile pass failed", "error", err) })
}

// every calls once at once and then every interval until ctx is done (then it returns nil),
// handing each error to failed. interval must be at least a second.
func every(ctx context.Context, interval time.Duration, what string, once func(context.Context) error, failed func(error)) error {
	if interval < time.Second {
		return fmt.Errorf("%s interval %v: want at least 1s", what, interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := once(ctx); err != nil && ctx.Err() == nil {
			failed(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Once runs one pass. When Neutron does not answer nothing is changed; a network that cannot be
// provisioned or removed is reported in the error and the others are still done.
func (r *Reconciler) Once(ctx context.Context) error {
	r.passes.Add(1)
	err := r.once(ctx)
	if err != nil {
		r.failures.Add(1)
		return err
	}
	r.lastSuccess.Store(time.Now().UnixNano())
	r.ready.Store(true)
	return nil
}

func (r *Reconciler) once(ctx context.Context) error {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = min(r.Interval, 30*time.Second)
	}
	nctx, cancel := context.WithTimeout(ctx, timeout)
	want, err := r.wanted(nctx)
	cancel()
	if err != nil {
		return fmt.Errorf("ask Neutron what this chassis serves (nothing changed): %w", err)
	}
	present, err := r.Namespaces.Namespaces()
	if err != nil {
		return err
	}
	var stale []string
	for _, id := range present {
		if _, ok := want[id]; !ok {
			stale = append(stale, id)
		}
	}
	if len(want) == 0 && len(stale) > 0 {
		// Every namespace would go: make sure Neutron names this chassis the way we ask for it.
		nctx, cancel := context.WithTimeout(ctx, timeout)
		ok, err := r.Neutron.HostHasChassis(nctx, r.Host)
		cancel()
		if err != nil {
			return fmt.Errorf("no VM port is bound to %s; checking that Neutron knows that host before removing every namespace (nothing changed): %w", r.Host, err)
		}
		if !ok {
			return fmt.Errorf("no VM port is bound to %s and Neutron has no ovn-controller agent of that host: "+
				"is --host (Open_vSwitch external_ids:hostname) the name Neutron uses for this chassis? Nothing changed", r.Host)
		}
	}

	var errs []error
	for _, id := range stale {
		if err := r.Namespaces.Remove(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		r.log().Info("network has no VM port on this chassis any more: namespace removed", "network", id)
	}
	served := int64(0)
	if len(want) > 0 {
		sw, err := r.Switch.State(ctx)
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("read the switch: %w", err))...)
		}
		ids := make([]string, 0, len(want))
		for id := range want {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			changed, err := r.Namespaces.Ensure(ctx, sw, want[id])
			if err != nil {
				errs = append(errs, err)
				continue
			}
			served++
			if changed {
				r.log().Info("namespace provisioned", "network", id, "namespace", ovnmeta.NamespaceName(id))
			}
		}
	}
	r.served.Store(served)
	return errors.Join(errs...)
}

// wanted returns the networks with a VM port bound to the host that have a metadata port with a
// MAC and an IPv4 address (the agent provisions no others and tears their namespaces down).
func (r *Reconciler) wanted(ctx context.Context) (map[string]ovnmeta.Network, error) {
	nets, err := r.Neutron.VMNetworks(ctx, r.Host)
	if err != nil {
		return nil, err
	}
	want := map[string]ovnmeta.Network{}
	if len(nets) == 0 {
		return want, nil
	}
	mps, err := r.Neutron.MetadataPorts(ctx, nets)
	if err != nil {
		return nil, err
	}
	withPort := make([]string, 0, len(mps))
	for _, id := range nets {
		if _, ok := mps[id]; ok {
			withPort = append(withPort, id)
		}
	}
	prefixes, err := r.Neutron.SubnetPrefixes(ctx, withPort)
	if err != nil {
		return nil, err
	}
	for _, id := range withPort {
		mp := mps[id]
		n := ovnmeta.Network{ID: id, PortID: mp.ID, MAC: mp.MAC, Addresses: mp.Addresses(prefixes)}
		if err := n.Validate(); err != nil {
			r.log().Warn("network not served: its metadata port cannot be provisioned", "network", id, "error", err)
			continue
		}
		want[id] = n
	}
	return want, nil
}
