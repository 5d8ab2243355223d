package extproccmd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

type scripted struct{ err error }

func (s *scripted) Resolve(context.Context, resolve.Query) (resolve.Instance, error) {
	return resolve.Instance{InstanceID: "vm"}, s.err
}

// TestReadinessFollowsLookups: lookups count as the port source answering (even "no such port"),
// and failing lookups make the service not ready once the last answer is older than the cache covers.
func TestReadinessFollowsLookups(t *testing.T) {
	r := &readiness{probe: func(context.Context) error { return errors.New("unused") }, cacheCover: time.Minute}
	src := &scripted{}
	rr := readinessResolver{r: src, ready: r}
	q := resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: "n"}, Addr: netip.MustParseAddr("10.0.0.5")}

	if ok, _ := r.state(); ok {
		t.Fatal("ready before the source answered")
	}
	src.err = fmt.Errorf("resolve: %w", resolve.ErrNotFound)
	rr.Resolve(context.Background(), q)
	if ok, why := r.state(); !ok {
		t.Fatalf("not ready after Neutron answered: %s", why)
	}
	src.err = fmt.Errorf("neutron down: %w", resolve.ErrUnavailable)
	rr.Resolve(context.Background(), q)
	if ok, why := r.state(); !ok {
		t.Fatalf("not ready within the stale window: %s", why)
	}
	r.mu.Lock()
	r.lastOK = time.Now().Add(-2 * time.Minute)
	r.mu.Unlock()
	if ok, why := r.state(); ok || why == "" {
		t.Fatalf("ready (%q) although Neutron failed for longer than the stale window", why)
	}
	src.err = nil
	rr.Resolve(context.Background(), q)
	if ok, why := r.state(); !ok {
		t.Fatalf("not ready after Neutron answered again: %s", why)
	}
}
