//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/metaproxy/metaproxy/e2e/internal/clients"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/extproccmd"
)

// tokenLifetime is Keystone's [token] expiration in TestKeystoneOutagesAndCredentials.
const tokenLifetime = time.Minute

// TestKeystoneOutagesAndCredentials runs the scenarios' cloud with one-minute Keystone tokens,
// cmd/extproc on an application credential and cmd/xds on a password, and VMs under steady load:
// token expiry is invisible (and cheap: one new token per expiry, not one per lookup), Keystone
// down while the token is valid changes nothing, Keystone down at expiry is an outage the cache
// covers (a VM never seen gets 503 saying Keystone is unreachable) that ends without a restart;
// bad credentials give /readyz 503 with the reason, one log line, a counted cause and 503s to VMs;
// a password rotated under a running cmd/extproc never makes it sign an old identity.
func TestKeystoneOutagesAndCredentials(t *testing.T) {
	if err := openstack.KeystoneAvailable(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// Nova's metadata cache on: nova builds each answer with several Neutron calls of its own, and
	// one sqlite neutron-server validating every token with Keystone falls behind that load on a
	// busy 2-core machine (observed: Neutron answering after minutes, so nova after 20 s). What
	// is tested is metaproxy: its lookups still reach Neutron every TTL, across every expiry.
	e := setupWith(t, ctx, setupOptions{Auth: openstack.AuthKeystone, ExtprocCloud: cloudExtprocAppCred, XDSCloud: cloudXDS,
		TokenExpiration: tokenLifetime, NovaCacheExpiration: 3 * time.Minute})
	// More VMs, and a short TTL: lookups all the time, several of them after each expiry.
	for i := range 5 {
		e.addVM(ctx, fmt.Sprintf("k%d", i), "net-a", fmt.Sprintf("10.0.0.%d", 20+i))
	}
	e.restartExtproc(t, "--cache-ttl", "5s")
	loaded := []string{"a1", "a2", "b1", "k0", "k1", "k2", "k3", "k4"}

	t.Run("1_token_expiry_is_invisible", func(t *testing.T) {
		tokens0, lookups0 := e.tokensIssued(t, "metaproxy-extproc/"), e.extprocMetric(t, decide.MetricResolverLookups)
		xdsTokens0 := e.tokensIssued(t, "metaproxy-xds/")
		const expiries = 3
		l := e.startLoad(ctx, loaded)
		time.Sleep(expiries*tokenLifetime + 15*time.Second) // the load runs across the expiries
		l.stop(t)
		tokens, lookups := e.tokensIssued(t, "metaproxy-extproc/")-tokens0, e.extprocMetric(t, decide.MetricResolverLookups)-lookups0
		t.Logf("%d requests, %d Neutron lookups, %d new extproc tokens, %d new xds tokens across %d expiries",
			l.total(), int(lookups), tokens, e.tokensIssued(t, "metaproxy-xds/")-xdsTokens0, expiries)
		if tokens < expiries-1 || tokens > expiries+1 {
			t.Errorf("cmd/extproc got %d new tokens across %d expiries and %d lookups, want one per expiry", tokens, expiries, int(lookups))
		}
		if lookups < 10*float64(tokens) {
			t.Errorf("only %d lookups: the load did not cross the expiries with lookups", int(lookups))
		}
	})

	// Nova builds metadata with its own token, which Keystone down cannot renew either: nova's
	// cache, filled now, serves every loaded VM for the next steps, as nova's cache (15 s by
	// default) does in a real cloud for a shorter outage.
	if err := e.cloud.SetNovaCacheExpiration(ctx, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, name := range loaded {
		eventually(t, time.Minute, name+" served (nova's cache filled)", func() error {
			if r := e.curl(t, e.vms[name], "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusOK {
				return fmt.Errorf("%d %s", r.Status, r.Body)
			}
			return nil
		})
	}
	fresh := e.addVM(ctx, "k9", "net-a", "10.0.0.39") // never asked before Keystone goes away

	t.Run("2_keystone_down_while_the_token_is_valid", func(t *testing.T) {
		l := e.startLoad(ctx, loaded)
		defer l.stop(t)
		// Right after cmd/extproc's next token: it stays valid for the whole step.
		before := e.tokensIssued(t, "metaproxy-extproc/")
		eventually(t, tokenLifetime+20*time.Second, "cmd/extproc gets a new token", func() error {
			if e.tokensIssued(t, "metaproxy-extproc/") == before {
				return fmt.Errorf("no new token yet")
			}
			return nil
		})
		e.cloud.StopKeystone()
		time.Sleep(20 * time.Second) // the load runs against a Neutron whose Keystone is gone
	})

	t.Run("3_keystone_down_at_expiry", func(t *testing.T) {
		restarted := false
		defer func() { // the later steps need Keystone, whatever happened here
			if !restarted {
				_ = e.cloud.StartKeystone(ctx)
			}
		}()
		l := e.startLoad(ctx, loaded)
		eventually(t, tokenLifetime+10*time.Second, "cmd/extproc's token expires and Keystone cannot renew it", func() error {
			if v := e.extprocMetric(t, extproccmd.MetricNeutronFailures, "cause=keystone_unreachable"); v == 0 {
				return fmt.Errorf("no keystone_unreachable failure yet")
			}
			return nil
		})
		r := e.curl(t, fresh, "GET", "/openstack/latest/meta_data.json", nil, nil)
		if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "Keystone is unreachable") {
			t.Errorf("a VM never resolved while Keystone is down: %d %s, want 503 saying Keystone is unreachable", r.Status, r.Body)
		}
		time.Sleep(10 * time.Second) // cached answers keep standing in
		l.stop(t)                    // every loaded VM was resolved before: not one failure
		restarted = true
		if err := e.cloud.StartKeystone(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the fresh VM is served once Keystone is back, without a restart", func() error {
			if r := e.curl(t, fresh, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusOK {
				return fmt.Errorf("%d %s", r.Status, r.Body)
			}
			return nil
		})
		ownMetadata(t, fresh, e.curl(t, fresh, "GET", "/openstack/latest/meta_data.json", nil, nil))
	})

	t.Run("4_bad_credentials_are_clear", func(t *testing.T) {
		u, err := e.cloud.CreateUser(ctx, openstack.UserSpec{Name: "bad-creds", Password: "right-password", Roles: []string{"advsvc"}})
		if err != nil {
			t.Fatal(err)
		}
		expiresAt := time.Now().Add(2 * time.Second)
		expiring, err := e.cloud.CreateAppCredential(ctx, u, "expiring", []string{"advsvc"}, expiresAt)
		if err != nil {
			t.Fatal(err)
		}
		wrongPassword, unknownProject := u, u
		wrongPassword.Password = "wrong-password"
		unknownProject.Project = "no-such-project"
		e.addClouds(t, map[string]clouds.Cloud{
			"wrong-password": e.cloud.PasswordCloud(wrongPassword), "unknown-project": e.cloud.PasswordCloud(unknownProject),
			"expired-appcred": e.cloud.AppCredCloud(expiring),
		})
		time.Sleep(time.Until(expiresAt) + time.Second) // the application credential expires
		for _, entry := range []string{"wrong-password", "unknown-project", "expired-appcred"} {
			t.Run(entry, func(t *testing.T) {
				e.badCredentials(t, entry)
			})
		}
		e.restartExtproc(t, "--cache-ttl", "5s")
	})

	t.Run("5_rotated_password_never_serves_an_old_identity", func(t *testing.T) {
		// cmd/extproc on the password of a user whose password is then changed, as an operator
		// rotating credentials in the wrong order would.
		u, err := e.cloud.CreateUser(ctx, openstack.UserSpec{Name: "rotated", Password: "old-password", Roles: []string{"advsvc"}})
		if err != nil {
			t.Fatal(err)
		}
		e.addClouds(t, map[string]clouds.Cloud{"rotated": e.cloud.PasswordCloud(u)})
		e.restartExtproc(t, "--cache-ttl", "5s", "--os-cloud", "rotated")
		a1 := e.vms["a1"]
		ownMetadata(t, a1, e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil))
		if err := e.cloud.ChangePassword(ctx, u, "new-password"); err != nil {
			t.Fatal(err)
		}
		// Within a token lifetime Neutron refuses the token, Keystone the old password: from then
		// on a1 (cached, resolved a moment ago) gets 503 naming the credentials, never its old
		// identity served stale.
		eventually(t, tokenLifetime+30*time.Second, "Neutron refuses the old credentials", func() error {
			r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil)
			if r.Status == http.StatusOK {
				return fmt.Errorf("still served")
			}
			if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "credentials") {
				t.Fatalf("%d %s, want 503 naming the credentials", r.Status, r.Body)
			}
			return nil
		})
		for range 5 {
			r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil)
			if r.Status != http.StatusServiceUnavailable {
				t.Fatalf("after the refusal: %d %s, want 503 (no stale identity)", r.Status, r.Body)
			}
		}
		if v := e.extprocMetric(t, extproccmd.MetricNeutronFailures, "cause=credentials"); v == 0 {
			t.Errorf("no credentials failure counted")
		}
		e.restartExtproc(t, "--cache-ttl", "5s")
		ownMetadata(t, a1, e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil))
	})

	t.Run("6_xds_says_why", func(t *testing.T) {
		// cmd/xds restarted on a wrong password: /readyz names it; Envoy keeps its listeners.
		argv := e.xds.argv
		e.xds.stop()
		e.xds.argv = append(append([]string(nil), argv...), "--os-cloud", "wrong-password")
		if err := e.xds.start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			e.xds.stop()
			e.xds.argv = argv
			if err := e.xds.start(); err != nil {
				t.Fatal(err)
			}
		}()
		notReadyBecause(t, e.xdsAdmin, "Keystone refused the credentials")
		ownMetadata(t, e.vms["b1"], e.curl(t, e.vms["b1"], "GET", "/openstack/latest/meta_data.json", nil, nil))
	})
}

// badCredentials restarts cmd/extproc on the clouds.yaml entry and checks that it says what is
// wrong: /readyz 503 naming the refused credentials, VMs (even one resolved a moment ago) get 503
// naming the credentials, the failure is logged once for all of their requests, and counted.
func (e *env) badCredentials(t *testing.T, entry string) {
	t.Helper()
	e.extproc.stop()
	e.extproc.argv = append(append([]string(nil), e.extprocArgs...), "--os-cloud", entry)
	logStart := len(e.extproc.logs())
	if err := e.extproc.start(); err != nil {
		t.Fatal(err)
	}
	notReadyBecause(t, e.extprocAdmin, "Keystone refused the credentials", entry)
	for _, name := range []string{"a1", "a2", "b1", "k0", "k1"} {
		for range 3 {
			r := e.curl(t, e.vms[name], "GET", "/openstack/latest/meta_data.json", nil, nil)
			if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "refuses the metadata proxy's credentials") {
				t.Fatalf("%s: %d %s, want 503 naming the credentials", name, r.Status, r.Body)
			}
		}
	}
	logs := e.extproc.logs()[logStart:]
	if n := strings.Count(logs, "Neutron lookups fail"); n != 1 {
		t.Errorf("%d 'Neutron lookups fail' lines for 15 requests and the probes, want 1:\n%s", n, logs)
	}
	if v := e.extprocMetric(t, extproccmd.MetricNeutronFailures, "cause=credentials"); v == 0 {
		t.Errorf("no failure counted under cause=credentials")
	}
}

// notReadyBecause waits until the /readyz of the admin listener answers 503 with every one of
// reasons in its body.
func notReadyBecause(t *testing.T, admin string, reasons ...string) {
	t.Helper()
	eventually(t, 30*time.Second, "/readyz of "+admin+" says "+strings.Join(reasons, ", "), func() error {
		code, body, err := httpGet("http://" + admin + "/readyz")
		if err != nil {
			return err
		}
		for _, r := range reasons {
			if code != http.StatusServiceUnavailable || !strings.Contains(body, r) {
				return fmt.Errorf("%d %s", code, body)
			}
		}
		return nil
	})
}

// tokensIssued counts the tokens Keystone issued to clients whose User-Agent starts with agent.
func (e *env) tokensIssued(t *testing.T, agent string) int {
	t.Helper()
	reqs, err := e.cloud.KeystoneRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range reqs {
		if r.Method == http.MethodPost && r.URI == "/v3/auth/tokens" && r.Status == http.StatusCreated && strings.HasPrefix(r.UserAgent, agent) {
			n++
		}
	}
	return n
}

// extprocMetric sums the series of cmd/extproc's metric family name whose labels include want.
func (e *env) extprocMetric(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	_, body, err := httpGet("http://" + e.extprocAdmin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		labels, value, _ := strings.Cut(rest, " ")
		match := true
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			match = match && strings.Contains(labels, k+`="`+v+`"`)
		}
		if match {
			var f float64
			fmt.Sscan(value, &f)
			sum += f
		}
	}
	return sum
}

// steadyLoad is VMs fetching their meta_data.json in a loop, each request checked.
type steadyLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu       sync.Mutex
	requests int
	failures []string
}

// startLoad has each named VM fetch its meta_data.json every second until stop (or the end of
// the test).
func (e *env) startLoad(ctx context.Context, names []string) *steadyLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &steadyLoad{cancel: cancel}
	e.t.Cleanup(func() { cancel(); l.wg.Wait() })
	for _, name := range names {
		v := e.vms[name]
		l.wg.Go(func() {
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
				r, err := clients.Curl(rctx, v.ns, "GET", "/openstack/latest/meta_data.json", nil, nil)
				rcancel()
				if ctx.Err() != nil {
					return
				}
				var md metaData
				failure := ""
				switch {
				case err != nil:
					failure = err.Error()
				case r.Status != http.StatusOK:
					failure = fmt.Sprintf("%d %s", r.Status, r.Body)
				case json.Unmarshal(r.Body, &md) != nil || md.UUID != v.os.InstanceID:
					failure = fmt.Sprintf("someone else's metadata: %s", r.Body)
				}
				l.mu.Lock()
				l.requests++
				if failure != "" {
					l.failures = append(l.failures, fmt.Sprintf("%s %s: %s", time.Now().Format(time.TimeOnly), name, failure))
				}
				l.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		})
	}
	return l
}

func (l *steadyLoad) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.requests
}

// stop ends the load and fails t if any request failed (once: later calls do nothing).
func (l *steadyLoad) stop(t *testing.T) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	first := false
	l.once.Do(func() { first = true })
	if !first {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.requests == 0 {
		t.Error("the load made no request")
	}
	if len(l.failures) > 0 {
		t.Errorf("%d of %d requests failed:\n%s", len(l.failures), l.requests, strings.Join(l.failures, "\n"))
	}
}
