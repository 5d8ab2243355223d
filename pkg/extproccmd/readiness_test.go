package extproccmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

type scripted struct{ err error }

func (s *scripted) Resolve(context.Context, resolve.Query) (resolve.Instance, error) {
	return resolve.Instance{InstanceID: "vm"}, s.err
}

// TestReadinessFollowsLookups: lookups count as the port source answering (even "no such port"),
// and failing lookups make the service not ready once the last answer is older than the cache covers.
func TestReadinessFollowsLookups(t *testing.T) {
	r := &readiness{probe: func(context.Context) (error, error) { return nil, errors.New("unused") }, cacheCover: time.Minute}
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

// TestRefusalsMakeNotReadyAtOnce: Neutron refusing the credentials (or its policy refusing) is no
// outage the cache may cover: not ready at the first failure, with the cause in the reason.
func TestRefusalsMakeNotReadyAtOnce(t *testing.T) {
	for c, wantReady := range map[cause.Cause]bool{
		cause.Credentials: false, cause.Forbidden: false, cause.TLS: false, cause.BadResponse: false,
		cause.Unreachable: true, cause.Timeout: true, cause.ServerError: true,
		cause.KeystoneUnreachable: true, cause.Saturated: true,
	} {
		r := &readiness{probe: func(context.Context) (error, error) { return nil, nil }, cacheCover: time.Minute}
		r.markOK(time.Now())
		r.markErr(fmt.Errorf("resolve 10.0.0.5: %w: %w", resolve.ErrUnavailable, &cause.Error{Cause: c, Err: errors.New("it failed")}))
		if ok, why := r.state(); ok != wantReady || (!ok && !strings.Contains(why, string(c))) {
			t.Errorf("%s: ready %v (%q), want %v", c, ok, why, wantReady)
		}
	}
}

// TestDistinctFailuresAreLoggedOnce: the same failure for a hundred VMs is one log line; another
// failure is another line; the recovery is one more.
func TestDistinctFailuresAreLoggedOnce(t *testing.T) {
	var logs strings.Builder
	r := &readiness{log: slog.New(slog.NewTextHandler(&logs, nil)), cacheCover: time.Minute}
	refused := &cause.Error{Cause: cause.Credentials, Err: errors.New("Keystone refused the credentials")}
	down := &cause.Error{Cause: cause.KeystoneUnreachable, Err: errors.New("Keystone is unreachable")}
	for i := range 100 {
		r.markErr(fmt.Errorf("resolve 10.0.0.%d: %w: %w", i, resolve.ErrUnavailable, refused))
	}
	for i := range 100 {
		r.markErr(fmt.Errorf("resolve 10.0.1.%d: %w: %w", i, resolve.ErrUnavailable, down))
	}
	r.markOK(time.Now())
	r.markOK(time.Now())
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "cause=credentials") || !strings.Contains(lines[1], "cause=keystone_unreachable") ||
		!strings.Contains(lines[2], "Neutron answers again") || !strings.Contains(lines[2], "failures=200") {
		t.Fatalf("log lines:\n%s\nwant one per distinct failure and one for the recovery", logs.String())
	}
}

// TestBlindCredentialsAreNotReady: credentials that see no other project's port and carry no
// cross-project role make the service not ready, and "no such port" becomes that failure.
func TestBlindCredentialsAreNotReady(t *testing.T) {
	member := &osclient.Identity{User: "metaproxy-extproc", Project: "service", ProjectID: "p-service", Roles: []string{"member", "reader"}}
	tests := map[string]struct {
		id       *osclient.Identity
		projects []string
		blind    bool
	}{
		"noauth":                        {id: nil},
		"sees another project's port":   {id: member, projects: []string{"p-service", "p-other"}},
		"only its own ports, no role":   {id: member, projects: []string{"p-service"}, blind: true},
		"no port at all, no role":       {id: member, blind: true},
		"no port at all, advsvc":        {id: &osclient.Identity{ProjectID: "p", Roles: []string{"advsvc"}}},
		"no port at all, admin":         {id: &osclient.Identity{ProjectID: "p", Roles: []string{"admin", "member", "reader"}}},
		"no port at all, service (Zed)": {id: &osclient.Identity{ProjectID: "p", Roles: []string{"service"}}, blind: true},
	}
	for name, tc := range tests {
		err := visibility(tc.id, tc.projects)
		if (err != nil) != tc.blind {
			t.Errorf("%s: %v, want blind %v", name, err, tc.blind)
		}
		if c, _ := cause.Of(err); err != nil && (c != cause.Forbidden || !strings.Contains(err.Error(), "advsvc")) {
			t.Errorf("%s: %v, want forbidden naming the role to grant", name, err)
		}
	}

	blind := visibility(member, nil)
	r := &readiness{probe: func(context.Context) (error, error) { return blind, nil }, cacheCover: time.Minute}
	if answered, err := r.check(context.Background()); !answered || err != nil {
		t.Fatalf("check: %v, %v; want Neutron's answer recorded", answered, err)
	}
	if ok, why := r.state(); ok || !strings.Contains(why, "see no port of another project") {
		t.Fatalf("ready %v because %q, want not ready, the blind credentials named", ok, why)
	}
	rr := readinessResolver{r: &scripted{err: fmt.Errorf("resolve: %w", resolve.ErrNotFound)}, ready: r}
	_, err := rr.Resolve(context.Background(), resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: "n"}, Addr: netip.MustParseAddr("10.0.0.5")})
	if c, _ := cause.Of(err); !errors.Is(err, resolve.ErrUnavailable) || errors.Is(err, resolve.ErrNotFound) || c != cause.Forbidden || resolve.MayServeStale(err) {
		t.Fatalf("not found while blind: %v (cause %q), want an unavailable, forbidden error", err, c)
	}
}
