package answercache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// httpNeutron is a Neutron over HTTP whose answer to GET /v2.0/ports the test sets: a port for the
// asked address (0), an HTTP status, or a connection closed without an answer (-1). It counts the
// requests.
type httpNeutron struct {
	srv   *httptest.Server
	mode  atomic.Int64
	calls atomic.Int64
}

const closeConn = -1

func newHTTPNeutron(t *testing.T) *httpNeutron {
	t.Helper()
	n := &httpNeutron{}
	n.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.calls.Add(1)
		// One request per connection: Go's transport retries a GET once when a reused connection
		// closes without an answer, which would count one lookup twice.
		w.Header().Set("Connection", "close")
		switch m := int(n.mode.Load()); m {
		case 0:
			ip := strings.TrimPrefix(r.URL.Query().Get("fixed_ips"), "ip_address=")
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"ports":[{"id":"port-%s","device_id":"vm-%s","project_id":"p1","network_id":"net1"}]}`, ip, ip)
		case closeConn:
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(m)
			fmt.Fprintf(w, `{"NeutronError":{"type":"X","message":"status %d","detail":""}}`, m)
		}
	}))
	t.Cleanup(n.srv.Close)
	return n
}

// cache is a Cache over the real Neutron resolver talking HTTP to n.
func (n *httpNeutron) cache(t *testing.T, clk *clock, opt Options) *Cache[string] {
	t.Helper()
	client, err := osclient.NewNetworkClient(context.Background(), osclient.Options{NeutronURL: n.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return newCache(t, resolve.NewNeutron(resolve.FixedClient{C: client}, resolve.NeutronOptions{}), clk, opt)
}

// TestRefusedCredentialsNeverServeStale: once an answer has expired, Neutron answering 401 or 403
// gets the error to the caller (no stale identity), remembered for RetryAfterFailure, and the old
// answer is gone: a later outage does not bring it back.
func TestRefusedCredentialsNeverServeStale(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			n := newHTTPNeutron(t)
			clk := &clock{t: time.Unix(1000, 0)}
			c := n.cache(t, clk, Options{TTL: 10 * time.Second, StaleWindow: time.Minute, RetryAfterFailure: 2 * time.Second})
			mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)

			n.mode.Store(int64(status))
			clk.add(11 * time.Second)
			for i := range 3 {
				v, o, err := c.Lookup(context.Background(), query("10.0.0.5"))
				c, _ := cause.Of(err)
				if v != "" || !errors.Is(err, resolve.ErrUnavailable) || (c != cause.Credentials && c != cause.Forbidden) {
					t.Fatalf("lookup %d after %d: %q, %s, %v (cause %q); want the refusal, no answer", i, status, v, o, err, c)
				}
			}
			if got := n.calls.Load(); got != 2 {
				t.Errorf("Neutron saw %d requests, want 2 (the fill, one refused refresh remembered)", got)
			}
			// An outage right after: the refused answer is not served either.
			n.mode.Store(http.StatusServiceUnavailable)
			clk.add(2 * time.Second)
			if v, _, err := c.Lookup(context.Background(), query("10.0.0.5")); v != "" || !errors.Is(err, resolve.ErrUnavailable) {
				t.Fatalf("outage after the refusal: %q, %v; want no answer", v, err)
			}
		})
	}
}

// TestUnreachableServesStaleOnlyInsideTheWindow: a connection failure or a 5xx lets an expired
// answer stand in until TTL + StaleWindow, asking Neutron once per RetryAfterFailure; past the
// window the caller gets the error.
func TestUnreachableServesStaleOnlyInsideTheWindow(t *testing.T) {
	for name, mode := range map[string]int64{"connection closed": closeConn, "503": http.StatusServiceUnavailable} {
		t.Run(name, func(t *testing.T) {
			n := newHTTPNeutron(t)
			clk := &clock{t: time.Unix(1000, 0)}
			c := n.cache(t, clk, Options{TTL: 10 * time.Second, StaleWindow: 30 * time.Second, RetryAfterFailure: 2 * time.Second})
			mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
			n.mode.Store(mode)

			clk.add(11 * time.Second) // expired, inside the window
			mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Stale)
			mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Stale)
			if got := n.calls.Load(); got != 2 {
				t.Fatalf("Neutron saw %d requests, want 2 (the fill, one failed refresh)", got)
			}
			clk.add(2 * time.Second)
			mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Stale)
			if got := n.calls.Load(); got != 3 {
				t.Fatalf("Neutron saw %d requests, want 3 (retried after RetryAfterFailure)", got)
			}
			clk.add(28 * time.Second) // 41 s after the fill: past TTL + StaleWindow
			if v, _, err := c.Lookup(context.Background(), query("10.0.0.5")); v != "" || !resolve.MayServeStale(err) || !errors.Is(err, resolve.ErrUnavailable) {
				t.Fatalf("past the window: %q, %v; want the outage error, no answer", v, err)
			}
		})
	}
}

// TestFailuresAreRememberedForKeysWithNothingCached: a VM never resolved retrying while Neutron is
// down costs one Neutron call per RetryAfterFailure, not one per retry.
func TestFailuresAreRememberedForKeysWithNothingCached(t *testing.T) {
	n := newHTTPNeutron(t)
	n.mode.Store(http.StatusServiceUnavailable)
	clk := &clock{t: time.Unix(1000, 0)}
	c := n.cache(t, clk, Options{RetryAfterFailure: 2 * time.Second})
	for i := range 10 {
		if _, _, err := c.Lookup(context.Background(), query("10.0.0.9")); !errors.Is(err, resolve.ErrUnavailable) {
			t.Fatalf("retry %d: %v, want ErrUnavailable", i, err)
		}
	}
	if got := n.calls.Load(); got != 1 {
		t.Fatalf("10 retries cost Neutron %d calls, want 1", got)
	}
	n.mode.Store(0)
	clk.add(2 * time.Second)
	mustLookup(t, c, query("10.0.0.9"), "vm-10.0.0.9", Miss)
	if got := n.calls.Load(); got != 2 {
		t.Fatalf("Neutron saw %d requests, want 2", got)
	}
}

// TestDoubtShortensAnAnswer: an answer nova turned down is kept only for NegativeTTL, then asked
// for again; a negative answer is not lengthened, and doubting twice does not shorten further.
func TestDoubtShortensAnAnswer(t *testing.T) {
	n := newHTTPNeutron(t)
	clk := &clock{t: time.Unix(1000, 0)}
	c := n.cache(t, clk, Options{TTL: 10 * time.Second, NegativeTTL: 2 * time.Second})
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
	c.Doubt(query("10.0.0.5"))
	c.Doubt(query("10.0.0.77")) // not cached: nothing happens
	clk.add(1500 * time.Millisecond)
	c.Doubt(query("10.0.0.5")) // from now: not later than the first doubt's bound
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Hit)
	if got := n.calls.Load(); got != 1 {
		t.Fatalf("Neutron saw %d requests within NegativeTTL of the doubt, want 1", got)
	}
	clk.add(600 * time.Millisecond) // 2.1 s after the first doubt, well inside TTL
	mustLookup(t, c, query("10.0.0.5"), "vm-10.0.0.5", Miss)
	if got := n.calls.Load(); got != 2 {
		t.Fatalf("Neutron saw %d requests, want 2", got)
	}
}

func TestStaleWindowIsCapped(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{0: DefaultStaleWindow, -1: 0, time.Hour: MaxStaleWindow, 3 * time.Minute: 3 * time.Minute} {
		o := Options{StaleWindow: in}
		o.setDefaults()
		if o.StaleWindow != want {
			t.Errorf("StaleWindow %v -> %v, want %v", in, o.StaleWindow, want)
		}
	}
}
