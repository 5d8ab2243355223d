package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/metaproxy/metaproxy/pkg/cause"
)

// gatedNeutron answers GET /v2.0/gated/ports with one port for the asked address, but holds every
// request until release is closed. It counts the requests and the most it held at once, and says
// on full when it holds want of them.
type gatedNeutron struct {
	*fakeNeutron
	release chan struct{}
	full    chan struct{}
	want    int64

	calls, inFlight, maxInFlight atomic.Int64
	fullOnce                     sync.Once
}

func newGatedNeutron(t *testing.T, want int64) *gatedNeutron {
	g := &gatedNeutron{fakeNeutron: newFakeNeutron(t), release: make(chan struct{}), full: make(chan struct{}), want: want}
	g.server.Mux.HandleFunc("/v2.0/gated/ports", func(w http.ResponseWriter, r *http.Request) {
		g.calls.Add(1)
		n := g.inFlight.Add(1)
		defer g.inFlight.Add(-1)
		for {
			m := g.maxInFlight.Load()
			if n <= m || g.maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		if n >= g.want {
			g.fullOnce.Do(func() { close(g.full) })
		}
		select {
		case <-g.release:
		case <-r.Context().Done():
			return
		}
		ip := r.URL.Query().Get("fixed_ips")[len("ip_address="):]
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, portsJSON(portJSON("port-"+ip, "vm-"+ip, "p", "p", netA)))
	})
	return g
}

func (g *gatedNeutron) clients() NeutronClient {
	c := g.client()
	c.ResourceBase = g.server.Endpoint() + "v2.0/gated/"
	return FixedClient{c}
}

// TestNeutronCapHoldsUnder1000ConcurrentMisses: 1000 lookups of distinct addresses at once reach
// Neutron at most MaxConcurrent at a time, and every one is answered (exact call count 1000).
func TestNeutronCapHoldsUnder1000ConcurrentMisses(t *testing.T) {
	const limit = 16
	g := newGatedNeutron(t, limit)
	n := NewNeutron(g.clients(), NeutronOptions{MaxConcurrent: limit, Timeout: time.Minute})
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 1000 {
		addr := netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 1)})
		wg.Go(func() {
			inst, err := n.Resolve(context.Background(), Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: addr})
			if err == nil && inst.InstanceID != "vm-"+addr.String() {
				err = fmt.Errorf("%s resolved to %s", addr, inst.InstanceID)
			}
			errs <- err
		})
	}
	<-g.full // the cap is reached: limit requests are held
	close(g.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := g.maxInFlight.Load(); got != limit {
		t.Errorf("Neutron saw up to %d requests at once, want the cap %d", got, limit)
	}
	if got := g.calls.Load(); got != 1000 {
		t.Errorf("Neutron saw %d requests, want 1000", got)
	}
}

// TestNeutronCapWaitIsBoundedByTheDeadline: with every slot taken by a Neutron call that does not
// return, the next lookup gives up at its deadline with CauseSaturated, without a Neutron call.
func TestNeutronCapWaitIsBoundedByTheDeadline(t *testing.T) {
	g := newGatedNeutron(t, 1)
	n := NewNeutron(g.clients(), NeutronOptions{MaxConcurrent: 1, Timeout: time.Minute})
	q := func(last byte) Query {
		return Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.AddrFrom4([4]byte{10, 0, 0, last})}
	}
	first := make(chan error, 1)
	go func() { _, err := n.Resolve(context.Background(), q(5)); first <- err }()
	<-g.full
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := n.Resolve(ctx, q(6))
	if c, _ := cause.Of(err); !errors.Is(err, ErrUnavailable) || c != cause.Saturated {
		t.Fatalf("err = %v (cause %q), want ErrUnavailable with cause saturated", err, c)
	}
	close(g.release)
	if err := <-first; err != nil {
		t.Errorf("the held call: %v", err)
	}
	if got := g.calls.Load(); got != 1 {
		t.Errorf("Neutron saw %d requests, want 1 (the waiter never called)", got)
	}
}

// failingClients is a NeutronClient whose authentication fails.
type failingClients struct{ err error }

func (f failingClients) Client(context.Context) (*gophercloud.ServiceClient, error) {
	return nil, f.err
}

// TestNeutronAuthenticationErrorKeepsItsCause: a failed authentication reaches the caller as
// ErrUnavailable with its cause.
func TestNeutronAuthenticationErrorKeepsItsCause(t *testing.T) {
	refused := &cause.Error{Cause: cause.Credentials, Err: errors.New("Keystone refused the credentials")}
	_, err := NewNeutron(failingClients{refused}, NeutronOptions{}).Resolve(context.Background(),
		Query{Scope: Scope{Kind: KindNetwork, ID: netA}, Addr: netip.MustParseAddr("10.0.0.5")})
	if c, _ := cause.Of(err); !errors.Is(err, ErrUnavailable) || c != cause.Credentials {
		t.Fatalf("err = %v (cause %q), want ErrUnavailable with cause credentials", err, c)
	}
}
