package answercache

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// fakeResolver answers from a function and counts calls; gate, when set, blocks every call until
// closed; entered, when set, receives a value as each call starts.
type fakeResolver struct {
	calls   atomic.Int64
	gate    chan struct{}
	entered chan struct{}
	fn      func(q resolve.Query) (resolve.Instance, error)
}

func (f *fakeResolver) Resolve(ctx context.Context, q resolve.Query) (resolve.Instance, error) {
	f.calls.Add(1)
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return resolve.Instance{}, ctx.Err()
		}
	}
	return f.fn(q)
}

var _ resolve.Resolver = (*fakeResolver)(nil)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func query(ip string) resolve.Query {
	return resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: "net1"}, Addr: netip.MustParseAddr(ip)}
}

func byIP(q resolve.Query) (resolve.Instance, error) {
	return resolve.Instance{InstanceID: "vm-" + q.Addr.String(), ProjectID: "p1"}, nil
}

func newCache(t *testing.T, r resolve.Resolver, c *clock, opt Options) *Cache[string] {
	t.Helper()
	return newCacheBuild(t, r, c, opt, instanceID)
}

func newCacheBuild(t *testing.T, r resolve.Resolver, c *clock, opt Options, build Build[string]) *Cache[string] {
	t.Helper()
	opt.Now = c.now
	return New(r, build, opt)
}

// waiters makes c count the callers waiting on a flight, and returns a function that blocks until
// n have.
func waiters(c *Cache[string]) func(n int64) {
	var count atomic.Int64
	more := make(chan struct{}, 1)
	c.waiting = func() {
		count.Add(1)
		select {
		case more <- struct{}{}:
		default:
		}
	}
	return func(n int64) {
		for count.Load() < n {
			<-more
		}
	}
}

func mustLookup(t *testing.T, c *Cache[string], q resolve.Query, wantVal string, wantOutcome Outcome) {
	t.Helper()
	v, o, err := c.Lookup(context.Background(), q)
	if err != nil || v != wantVal || o != wantOutcome {
		t.Fatalf("Lookup(%s) = %q, %s, %v; want %q, %s", q.Addr, v, o, err, wantVal, wantOutcome)
	}
}

func TestPositiveAnswersLiveForTTL(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	r := &fakeResolver{fn: byIP}
	c := newCache(t, r, clk, Options{TTL: 10 * time.Second})
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
	clk.add(9 * time.Second)
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Hit)
	if r.calls.Load() != 1 {
		t.Fatalf("resolver calls = %d within the TTL, want 1", r.calls.Load())
	}
	clk.add(2 * time.Second)
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
	if r.calls.Load() != 2 {
		t.Fatalf("resolver calls = %d after the TTL, want 2", r.calls.Load())
	}
}

func TestNegativeAnswersAreCachedBriefly(t *testing.T) {
	for name, answer := range map[string]error{
		"not found": fmt.Errorf("lookup: %w", resolve.ErrNotFound),
		"ambiguous": &resolve.AmbiguousError{PortIDs: []string{"p1", "p2"}},
	} {
		t.Run(name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1000, 0)}
			r := &fakeResolver{fn: func(resolve.Query) (resolve.Instance, error) { return resolve.Instance{}, answer }}
			c := newCache(t, r, clk, Options{TTL: 10 * time.Second, NegativeTTL: 2 * time.Second})
			for range 3 {
				if _, _, err := c.Lookup(context.Background(), query("10.0.0.9")); !errors.Is(err, answer) {
					t.Fatalf("err = %v, want %v", err, answer)
				}
			}
			if r.calls.Load() != 1 {
				t.Fatalf("calls = %d, want 1", r.calls.Load())
			}
			clk.add(3 * time.Second)
			_, o, _ := c.Lookup(context.Background(), query("10.0.0.9"))
			if o != Miss || r.calls.Load() != 2 {
				t.Fatalf("after the negative TTL: outcome %s, calls %d; want miss, 2", o, r.calls.Load())
			}
		})
	}
}

// TestBuildErrorsAreCachedLikeNegativeAnswers: an instance the value cannot be built from is
// answered with the build's error, for NegativeTTL, without asking the resolver again meanwhile.
func TestBuildErrorsAreCachedLikeNegativeAnswers(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	r := &fakeResolver{fn: byIP}
	errBuild := errors.New("cannot build")
	builds := 0
	c := newCacheBuild(t, r, clk, Options{TTL: 10 * time.Second, NegativeTTL: 2 * time.Second}, func(q resolve.Query, inst resolve.Instance) (string, error) {
		builds++
		if builds == 1 {
			return "", errBuild
		}
		return inst.InstanceID, nil
	})
	for range 3 {
		if v, _, err := c.Lookup(context.Background(), query("10.0.0.7")); !errors.Is(err, errBuild) || v != "" {
			t.Fatalf("Lookup = %q, %v; want the build error", v, err)
		}
	}
	if r.calls.Load() != 1 {
		t.Fatalf("resolver calls = %d, want 1", r.calls.Load())
	}
	clk.add(3 * time.Second)
	mustLookup(t, c, query("10.0.0.7"), "vm-10.0.0.7", Miss)
}

func TestUnavailableSourceServesStaleThenFails(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	var down atomic.Bool
	r := &fakeResolver{fn: func(q resolve.Query) (resolve.Instance, error) {
		if down.Load() {
			return resolve.Instance{}, fmt.Errorf("neutron: %w", resolve.ErrUnavailable)
		}
		return byIP(q)
	}}
	c := newCache(t, r, clk, Options{TTL: 10 * time.Second, StaleWindow: time.Minute, RetryAfterFailure: time.Second})
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
	down.Store(true)

	// A VM never seen before gets the error.
	if _, _, err := c.Lookup(context.Background(), query("10.0.0.6")); !errors.Is(err, resolve.ErrUnavailable) {
		t.Fatalf("unknown VM while the source is down: err = %v, want ErrUnavailable", err)
	}
	// A known VM past its TTL is served from the stale window ...
	clk.add(11 * time.Second)
	calls := r.calls.Load()
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Stale)
	if r.calls.Load() != calls+1 {
		t.Fatal("the expired entry was not refreshed first")
	}
	// ... without hammering the source until RetryAfterFailure has passed.
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Stale)
	if r.calls.Load() != calls+1 {
		t.Fatalf("source asked again within RetryAfterFailure")
	}
	clk.add(2 * time.Second)
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Stale)
	if r.calls.Load() != calls+2 {
		t.Fatalf("source not retried after RetryAfterFailure")
	}
	// Past the stale window the error reaches the caller.
	clk.add(time.Minute)
	if _, _, err := c.Lookup(context.Background(), query("10.0.0.5")); !errors.Is(err, resolve.ErrUnavailable) {
		t.Fatalf("past the stale window: err = %v, want ErrUnavailable", err)
	}
	// The source comes back: fresh answers again once the failure is no longer remembered.
	down.Store(false)
	clk.add(time.Second)
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
}

func TestConcurrentMissesAreCoalesced(t *testing.T) {
	r := &fakeResolver{fn: byIP, gate: make(chan struct{})}
	c := newCache(t, r, &clock{t: time.Unix(1000, 0)}, Options{})
	waitFor := waiters(c)
	const n = 50
	outcomes := make(chan Outcome, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			v, o, err := c.Lookup(context.Background(), query("10.0.0.5"))
			if err != nil || v != "vm-10.0.0.5" {
				t.Errorf("Lookup = %q, %v", v, err)
			}
			outcomes <- o
		})
	}
	waitFor(n) // every caller waits on the one flight the gate holds
	close(r.gate)
	wg.Wait()
	close(outcomes)
	count := map[Outcome]int{}
	for o := range outcomes {
		count[o]++
	}
	if r.calls.Load() != 1 {
		t.Fatalf("resolver calls = %d for %d concurrent misses, want 1", r.calls.Load(), n)
	}
	if count[Miss] != 1 || count[Coalesced] != n-1 {
		t.Fatalf("outcomes %v, want 1 miss and %d coalesced", count, n-1)
	}
}

// TestBootStorm is the product promise: N VMs each fetching M paths at once cost N lookups. Neutron
// (the gate) answers once every request waits.
func TestBootStorm(t *testing.T) {
	const vms, paths = 40, 12
	r := &fakeResolver{fn: byIP, gate: make(chan struct{})}
	c := newCache(t, r, &clock{t: time.Unix(1000, 0)}, Options{})
	waitFor := waiters(c)
	var wg sync.WaitGroup
	for vm := range vms {
		for range paths {
			wg.Go(func() {
				ip := fmt.Sprintf("10.0.%d.%d", vm/200, vm%200+2)
				if v, _, err := c.Lookup(context.Background(), query(ip)); err != nil || v != "vm-"+ip {
					t.Errorf("VM %s got %q, %v", ip, v, err)
				}
			})
		}
	}
	waitFor(vms * paths)
	close(r.gate)
	wg.Wait()
	if got := r.calls.Load(); got != vms {
		t.Fatalf("%d Neutron lookups for %d VMs x %d paths, want %d", got, vms, paths, vms)
	}
}

func TestImpatientCallerDoesNotFailOthers(t *testing.T) {
	r := &fakeResolver{fn: byIP, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	c := newCache(t, r, &clock{t: time.Unix(1000, 0)}, Options{})
	waitFor := waiters(c)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, _, err := c.Lookup(ctx, query("10.0.0.5")); first <- err }()
	<-r.entered
	second := make(chan string, 1)
	go func() { v, _, _ := c.Lookup(context.Background(), query("10.0.0.5")); second <- v }()
	waitFor(2) // the second caller joined the flight the first one started
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: err = %v", err)
	}
	close(r.gate)
	if v := <-second; v != "vm-10.0.0.5" {
		t.Fatalf("patient caller got %q", v)
	}
}

func TestSizeIsBounded(t *testing.T) {
	var evicted atomic.Int64
	c := newCache(t, &fakeResolver{fn: byIP}, &clock{t: time.Unix(1000, 0)}, Options{Size: 2, OnEvict: func() { evicted.Add(1) }})
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		mustLookup(t, c, query(ip), "vm-"+ip, Miss)
	}
	if c.Len() != 2 || evicted.Load() != 1 {
		t.Fatalf("len %d, evicted %d; want 2, 1", c.Len(), evicted.Load())
	}
}

// TestEvictsLeastRecentlyUsed: a hit makes an entry recent, so the entry evicted to make room is
// the one nobody asked for the longest, and a refreshed entry replaces its old self.
func TestEvictsLeastRecentlyUsed(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	r := &fakeResolver{fn: byIP}
	c := newCache(t, r, clk, Options{Size: 2, TTL: 10 * time.Second})
	mustLookup(t, c, query("10.0.0.1"), "vm-10.0.0.1", Miss)
	mustLookup(t, c, query("10.0.0.2"), "vm-10.0.0.2", Miss)
	mustLookup(t, c, query("10.0.0.1"), "vm-10.0.0.1", Hit) // .2 is now the least recently used
	mustLookup(t, c, query("10.0.0.3"), "vm-10.0.0.3", Miss)
	mustLookup(t, c, query("10.0.0.1"), "vm-10.0.0.1", Hit)
	mustLookup(t, c, query("10.0.0.2"), "vm-10.0.0.2", Miss) // evicted; now .3 is the oldest
	mustLookup(t, c, query("10.0.0.1"), "vm-10.0.0.1", Hit)
	clk.add(11 * time.Second)
	mustLookup(t, c, query("10.0.0.1"), "vm-10.0.0.1", Miss) // expired: refreshed in place
	if c.Len() != 2 {
		t.Fatalf("len %d, want 2", c.Len())
	}
	mustLookup(t, c, query("10.0.0.2"), "vm-10.0.0.2", Miss)
	if r.calls.Load() != 6 {
		t.Fatalf("resolver calls %d, want 6", r.calls.Load())
	}
}

func TestKeysIncludeScope(t *testing.T) {
	r := &fakeResolver{fn: func(q resolve.Query) (resolve.Instance, error) {
		return resolve.Instance{InstanceID: q.Scope.ID + "/" + q.Addr.String()}, nil
	}}
	c := newCache(t, r, &clock{t: time.Unix(1000, 0)}, Options{})
	a := query("10.0.0.5")
	b := a
	b.Scope.ID = "net2"
	mustLookup(t, c, a, "net1/10.0.0.5", Miss)
	mustLookup(t, c, b, "net2/10.0.0.5", Miss)
}

func instanceID(_ resolve.Query, i resolve.Instance) (string, error) { return i.InstanceID, nil }

func BenchmarkLookupHit(b *testing.B) {
	c := New[string](&fakeResolver{fn: byIP}, instanceID, Options{})
	q := query("10.0.0.5")
	c.Lookup(context.Background(), q)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Lookup(context.Background(), q)
		}
	})
}

func BenchmarkLookupMissCoalesced(b *testing.B) {
	r := &fakeResolver{fn: byIP}
	c := New[string](r, instanceID, Options{TTL: time.Nanosecond, NegativeTTL: time.Nanosecond})
	q := query("10.0.0.5")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Lookup(context.Background(), q)
		}
	})
	b.ReportMetric(float64(r.calls.Load())/float64(b.N), "lookups/op")
}
