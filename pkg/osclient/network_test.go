package osclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/cause"
)

// fakeCloud is a Keystone that issues numbered tokens and a Neutron that accepts only the latest,
// on two servers (so that Keystone can go away alone). Every request is counted.
type fakeCloud struct {
	keystone, neutron *httptest.Server

	tokenPosts atomic.Int64 // POST /v3/auth/tokens, answered or not
	neutronGET atomic.Int64
	userAgent  atomic.Value // of the last token request

	mu          sync.Mutex
	valid       string // the token Neutron accepts; "" after expire
	issued      int
	authStatus  int    // non-zero: Keystone answers token requests with this status
	neutronCode int    // non-zero: Neutron answers with this status
	roles       string // JSON list of the token's roles
}

func newFakeCloud(t *testing.T) *fakeCloud {
	t.Helper()
	f := &fakeCloud{roles: `[{"id":"r1","name":"advsvc"}]`}
	f.neutron = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" { // version discovery, without a token as in neutron-server
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"versions":[{"id":"v2.0","status":"CURRENT","links":[{"rel":"self","href":"http://%s/v2.0/"}]}]}`, r.Host)
			return
		}
		f.neutronGET.Add(1)
		f.mu.Lock()
		valid, code := f.valid, f.neutronCode
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Header.Get("X-Auth-Token") == "" || r.Header.Get("X-Auth-Token") != valid:
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"code":401,"title":"Unauthorized","message":"The request you have made requires authentication."}}`)
		case code != 0:
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"NeutronError":{"type":"X","message":"status %d","detail":""}}`, code)
		default:
			fmt.Fprint(w, `{"ports":[]}`)
		}
	}))
	t.Cleanup(f.neutron.Close)
	f.keystone = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v3/auth/tokens" {
			http.NotFound(w, r)
			return
		}
		f.tokenPosts.Add(1)
		f.userAgent.Store(r.UserAgent())
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.authStatus != 0 {
			w.WriteHeader(f.authStatus)
			fmt.Fprintf(w, `{"error":{"code":%d,"title":"x","message":"The request you have made requires authentication."}}`, f.authStatus)
			return
		}
		f.issued++
		f.valid = fmt.Sprintf("tok-%d", f.issued)
		w.Header().Set("X-Subject-Token", f.valid)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token":{"methods":["password"],"expires_at":"2099-01-01T00:00:00Z",
"user":{"id":"u1","name":"metaproxy-extproc","domain":{"id":"default"}},
"project":{"id":"p1","name":"service","domain":{"id":"default"}},"roles":%s,
"catalog":[{"type":"network","name":"neutron","endpoints":[{"interface":"public","region":"RegionOne","region_id":"RegionOne","url":%q}]}]}}`,
			f.roles, f.neutron.URL+"/")
	}))
	t.Cleanup(f.keystone.Close)
	dir := t.TempDir()
	clouds := filepath.Join(dir, "clouds.yaml")
	yaml := fmt.Sprintf("clouds:\n  lab:\n    auth:\n      auth_url: %s/v3\n      username: metaproxy-extproc\n      password: pw\n      project_name: service\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n", f.keystone.URL)
	if err := os.WriteFile(clouds, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", clouds)
	return f
}

func (f *fakeCloud) set(fn func(f *fakeCloud)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// listPorts makes one Neutron call through n.
func listPorts(ctx context.Context, n *Network) error {
	c, err := n.Client(ctx)
	if err != nil {
		return err
	}
	_, err = c.Get(ctx, c.ServiceURL("ports"), nil, nil)
	if err != nil {
		return cause.Neutron(err, false)
	}
	return nil
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestAuthenticatesOnFirstUse: New contacts nothing; a Keystone that refuses the credentials
// makes Client fail with cause.Credentials, and that failure is returned for RetryAuthAfter without
// asking Keystone again; once the credentials work, the next call after the pause authenticates.
func TestAuthenticatesOnFirstUse(t *testing.T) {
	f := newFakeCloud(t)
	f.set(func(f *fakeCloud) { f.authStatus = http.StatusUnauthorized })
	clock := &fakeClock{now: time.Unix(1000, 0)}
	n, err := New(Options{Cloud: "lab", RetryAuthAfter: 2 * time.Second, Now: clock.Now, UserAgent: "metaproxy-test/1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.tokenPosts.Load(); got != 0 {
		t.Fatalf("New asked Keystone %d times, want 0", got)
	}
	ctx := context.Background()
	for i := range 5 {
		_, err := n.Client(ctx)
		if c, ok := cause.Of(err); !ok || c != cause.Credentials || !strings.Contains(err.Error(), "refused the credentials") ||
			!strings.Contains(err.Error(), `clouds.yaml entry "lab"`) {
			t.Fatalf("call %d: %v (cause %q), want the credentials named as refused", i, err, c)
		}
	}
	if got := f.tokenPosts.Load(); got != 1 {
		t.Errorf("5 calls within RetryAuthAfter asked Keystone %d times, want 1", got)
	}
	f.set(func(f *fakeCloud) { f.authStatus = 0 })
	clock.Add(2 * time.Second)
	if err := listPorts(ctx, n); err != nil {
		t.Fatalf("after the pause: %v", err)
	}
	if got := f.tokenPosts.Load(); got != 2 {
		t.Errorf("Keystone asked %d times, want 2", got)
	}
	if ua, _ := f.userAgent.Load().(string); !strings.HasPrefix(ua, "metaproxy-test/1 gophercloud/") {
		t.Errorf("User-Agent %q, want metaproxy-test/1 first", ua)
	}
	id := n.Identity()
	if id == nil || id.User != "metaproxy-extproc" || id.Project != "service" || !id.HasRole("advsvc") || id.HasRole("admin") {
		t.Errorf("identity %+v", id)
	}
}

// TestConcurrentLookupsReauthenticateOnce: 100 concurrent calls with an expired token cost
// Keystone one new token, not one each (gophercloud's Reauthenticate under the token lock).
func TestConcurrentLookupsReauthenticateOnce(t *testing.T) {
	f := newFakeCloud(t)
	n, err := New(Options{Cloud: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := listPorts(ctx, n); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		f.set(func(f *fakeCloud) { f.valid = "" }) // the token expired
		before := f.tokenPosts.Load()
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for range 100 {
			wg.Go(func() { errs <- listPorts(ctx, n) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if got := f.tokenPosts.Load() - before; got != 1 {
			t.Errorf("round %d: 100 concurrent calls after expiry asked Keystone for %d tokens, want 1", round, got)
		}
	}
}

// TestKeystoneDownAtExpiry: the token expires while Keystone fails: calls fail with
// cause.KeystoneUnreachable, Keystone is asked at most once per RetryAuthAfter, and the next
// attempt after it recovers succeeds without a restart.
func TestKeystoneDownAtExpiry(t *testing.T) {
	f := newFakeCloud(t)
	clock := &fakeClock{now: time.Unix(1000, 0)}
	n, err := New(Options{Cloud: "lab", RetryAuthAfter: 2 * time.Second, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := listPorts(ctx, n); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeCloud) { f.valid, f.authStatus = "", http.StatusServiceUnavailable })
	before := f.tokenPosts.Load()
	for i := range 10 {
		err := listPorts(ctx, n)
		if c, _ := cause.Of(err); c != cause.KeystoneUnreachable || !strings.Contains(err.Error(), "re-authenticate") {
			t.Fatalf("call %d: %v (cause %q), want keystone_unreachable", i, err, c)
		}
	}
	if got := f.tokenPosts.Load() - before; got != 1 {
		t.Errorf("10 calls while Keystone fails asked it %d times, want 1", got)
	}
	f.set(func(f *fakeCloud) { f.authStatus = 0 })
	clock.Add(2 * time.Second)
	if err := listPorts(ctx, n); err != nil {
		t.Fatalf("Keystone back: %v", err)
	}

	// Keystone gone altogether (connection refused) at the next expiry.
	f.keystone.Close()
	f.set(func(f *fakeCloud) { f.valid = "" })
	clock.Add(2 * time.Second)
	err = listPorts(ctx, n)
	if c, _ := cause.Of(err); c != cause.KeystoneUnreachable || !strings.Contains(err.Error(), ") is unreachable") {
		t.Fatalf("Keystone closed: %v (cause %q), want keystone_unreachable", err, c)
	}
}

// TestNeutronFailuresByCause: what Neutron answers, through a Network, maps to causes.
func TestNeutronFailuresByCause(t *testing.T) {
	tests := map[int]cause.Cause{
		http.StatusForbidden:           cause.Forbidden,
		http.StatusInternalServerError: cause.ServerError,
		http.StatusServiceUnavailable:  cause.ServerError,
		http.StatusTooManyRequests:     cause.ServerError,
		http.StatusBadRequest:          cause.BadResponse,
		http.StatusNotFound:            cause.BadResponse,
	}
	f := newFakeCloud(t)
	n, err := New(Options{Cloud: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	for code, want := range tests {
		f.set(func(f *fakeCloud) { f.neutronCode = code })
		err := listPorts(context.Background(), n)
		if got, _ := cause.Of(err); got != want || !strings.Contains(err.Error(), fmt.Sprint(code)) {
			t.Errorf("HTTP %d: %v (cause %q), want %q", code, err, got, want)
		}
	}

	// The connection itself.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	c, err := New(Options{NeutronURL: closed.URL})
	if err != nil {
		t.Fatal(err)
	}
	if err := listPorts(context.Background(), c); !causeIs(err, cause.Unreachable) {
		t.Errorf("closed port: %v, want unreachable", err)
	}
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()
	c, _ = New(Options{NeutronURL: tlsSrv.URL})
	if err := listPorts(context.Background(), c); !causeIs(err, cause.TLS) || !strings.Contains(err.Error(), "cacert") {
		t.Errorf("untrusted certificate: %v, want tls", err)
	}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer slow.Close()
	c, _ = New(Options{NeutronURL: slow.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := listPorts(ctx, c); !causeIs(err, cause.Timeout) {
		t.Errorf("no answer: %v, want timeout", err)
	}
	if err := cause.Neutron(errors.New("json: cannot unmarshal"), false); err.Cause != cause.BadResponse {
		t.Errorf("decode error: %v, want bad_response", err)
	}
}

func causeIs(err error, want cause.Cause) bool {
	c, ok := cause.Of(err)
	return ok && c == want
}

// TestIdleConnectionsMatchTheCap: the transport keeps MaxIdleConnsPerHost connections per host.
func TestIdleConnectionsMatchTheCap(t *testing.T) {
	n, err := New(Options{NeutronURL: "http://127.0.0.1:9696/", MaxIdleConnsPerHost: 48})
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := n.http.Transport.(*http.Transport)
	if !ok || tr.MaxIdleConnsPerHost != 48 || tr.MaxIdleConns < 96 {
		t.Fatalf("transport %T %+v, want 48 idle connections per host", n.http.Transport, tr)
	}
	n, _ = New(Options{NeutronURL: "http://127.0.0.1:9696/"})
	if tr := n.http.Transport.(*http.Transport); tr.MaxIdleConnsPerHost != DefaultMaxIdleConnsPerHost {
		t.Errorf("default: %d idle connections per host, want %d", tr.MaxIdleConnsPerHost, DefaultMaxIdleConnsPerHost)
	}
}
