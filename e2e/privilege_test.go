//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/pkg/osclient"
)

// TestLeastPrivilege measures, against Debian's Zed neutron-server with its policy in code as
// shipped (enforce_new_defaults and enforce_scope off), which Keystone grant lets cmd/extproc
// identify the VMs of any project and cmd/xds list every network, and that one grant less fails
// with an error naming what is missing. The VM lives in a project of its own; every user lives in
// the service project.
//
// Found (docs/migrate-from-neutron-metadata-agent.md, Credentials): cmd/extproc needs advsvc (or
// admin); cmd/xds needs admin. Neutron answers the others without an error: it hides what the
// policy does not let them see, and metaproxy says so itself.
func TestLeastPrivilege(t *testing.T) {
	if err := openstack.Available(false); err != nil {
		t.Skipf("the e2e suite cannot run here: %v", err)
	}
	if err := openstack.KeystoneAvailable(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, openstack.Options{Auth: openstack.AuthKeystone})
	e.creds = e.neutronCredentials(ctx, cloudExtproc, cloudXDS)
	e.addNetwork(ctx, "net-a")
	vm := e.addVM(ctx, "a1", "net-a", "10.0.0.5")

	grants := []struct {
		name          string
		spec          openstack.UserSpec
		extprocWorks  bool
		xdsWorks      bool
		extprocSaysOr string // what cmd/extproc says when it does not work
	}{
		{name: "admin on the service project", spec: openstack.UserSpec{Roles: []string{"admin"}}, extprocWorks: true, xdsWorks: true},
		{name: "advsvc on the service project", spec: openstack.UserSpec{Roles: []string{"advsvc"}}, extprocWorks: true},
		{name: "member on the service project", spec: openstack.UserSpec{Roles: []string{"member"}}},
		{name: "service on the service project", spec: openstack.UserSpec{Roles: []string{"service"}}},
		{name: "reader on the system", spec: openstack.UserSpec{Roles: []string{"reader"}, SystemScope: true}},
	}
	entries := map[string]clouds.Cloud{}
	for i := range grants {
		g := &grants[i]
		g.spec.Name, g.spec.Password = fmt.Sprintf("lp-%d", i), fmt.Sprintf("lp-password-%d", i)
		u, err := e.cloud.CreateUser(ctx, g.spec)
		if err != nil {
			t.Fatal(err)
		}
		entries[u.Name] = e.cloud.PasswordCloud(u)
	}
	e.addClouds(t, entries)

	for i, g := range grants {
		entry := fmt.Sprintf("lp-%d", i)
		t.Run("extproc/"+g.name, func(t *testing.T) {
			// What Neutron itself shows this user: the VM's port, or (silently) nothing.
			client := e.clientFor(t, ctx, entry)
			q := url.Values{"network_id": {e.nets["net-a"].ID}, "fixed_ips": {"ip_address=" + vm.os.IP}, "fields": {"id"}}
			if n := countOf(t, ctx, client, "ports", q); (n == 1) != g.extprocWorks {
				t.Fatalf("Neutron shows %d ports for %s to this user", n, vm.os.IP)
			}
			out, err := e.extprocResolve(ctx, entry, e.nets["net-a"].ID, vm.os.IP)
			switch {
			case g.extprocWorks && (err != nil || !strings.Contains(out, "forwarded to nova as instance "+vm.os.InstanceID)):
				t.Fatalf("want %s resolved: %v\n%s", vm.os.IP, err, out)
			case !g.extprocWorks && (err == nil || !strings.Contains(out, "see no port of another project") ||
				!strings.Contains(out, "advsvc") || !strings.Contains(out, "answered 503")):
				t.Fatalf("want not ready naming the role to grant, and a 503 (not a 404): %v\n%s", err, out)
			}
			t.Logf("extproc resolve:\n%s", out)
			ready := e.serviceReadyz(t, ctx, "extproc", entry)
			if g.extprocWorks != strings.HasPrefix(ready, "200") {
				t.Errorf("extproc /readyz: %s", ready)
			}
		})
		t.Run("xds/"+g.name, func(t *testing.T) {
			client := e.clientFor(t, ctx, entry)
			if n := countOf(t, ctx, client, "subnets", url.Values{"network_id": {e.nets["net-a"].ID}}); (n == 1) != g.xdsWorks {
				t.Fatalf("Neutron shows %d subnets of the VM's network to this user", n)
			}
			// The agents API is admin-only (neutron/conf/policies/agent.py); this cloud runs no
			// agent, so only the answer's status is shown.
			_, err := client.Get(ctx, client.ServiceURL("agents"), nil, nil)
			t.Logf("GET /v2.0/agents: %v", err)
			ready := e.serviceReadyz(t, ctx, "xds", entry)
			switch {
			case g.xdsWorks && !strings.HasPrefix(ready, "200"):
				t.Fatalf("xds /readyz: %s, want 200", ready)
			case !g.xdsWorks && !strings.Contains(ready, "needs the admin role"):
				t.Fatalf("xds /readyz: %s, want 503 naming the admin role", ready)
			}
			t.Logf("xds /readyz: %s", ready)
		})
	}
}

// clientFor is a Neutron client with the clouds.yaml entry's credentials.
func (e *env) clientFor(t *testing.T, ctx context.Context, entry string) *gophercloud.ServiceClient {
	t.Helper()
	t.Setenv("OS_CLIENT_CONFIG_FILE", e.creds.cloudsYAML)
	c, err := osclient.NewNetworkClient(ctx, osclient.Options{Cloud: entry})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// countOf lists Neutron's resource with the query and returns how many it shows.
func countOf(t *testing.T, ctx context.Context, c *gophercloud.ServiceClient, resource string, q url.Values) int {
	t.Helper()
	var body map[string][]json.RawMessage
	if _, err := c.Get(ctx, c.ServiceURL(resource)+"?"+q.Encode(), &body, nil); err != nil {
		t.Fatalf("list %s: %v", resource, err)
	}
	return len(body[resource])
}

// extprocResolve runs `extproc resolve` with the clouds.yaml entry: what a VM at ip on network
// would be signed as, and whether the service would be ready.
func (e *env) extprocResolve(ctx context.Context, entry, network, ip string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "extproc"), "resolve", "--os-cloud", entry,
		"--network", network, "--ip", ip, "--secret-file", e.secretFile())
	cmd.Env = append(cmd.Environ(), e.creds.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// secretFile writes the suite's shared secret to a file once and returns its path.
func (e *env) secretFile() string {
	p := filepath.Join(e.dir, "secret")
	writeFile(e.t, p, e2eSecret+"\n")
	return p
}

// serviceReadyz runs cmd/extproc or cmd/xds with the clouds.yaml entry until its /readyz answers
// 200, or 503 with a reason that names a cause (the first probe or poll is done), and returns
// "<status> <body>".
func (e *env) serviceReadyz(t *testing.T, ctx context.Context, service, entry string) string {
	t.Helper()
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	argv := []string{filepath.Join(e.bin, "extproc"), "--listen", "unix://" + filepath.Join(t.TempDir(), "x.sock"),
		"--admin-listen", admin, "--secret-file", e.secretFile(), "--os-cloud", entry}
	if service == "xds" {
		argv = []string{filepath.Join(e.bin, "xds"), "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--admin-listen", admin,
			"--source", "neutron", "--neutron-mode", "all", "--node-id", nodeID, "--netns-dir", t.TempDir(),
			"--extproc-address", "unix:///nonexistent.sock", "--poll-interval", "1s", "--os-cloud", entry}
	}
	p := startProc(t, t.TempDir(), service, e.creds.env, argv...)
	defer p.stop()
	var got string
	eventually(t, 60*time.Second, service+" /readyz settles", func() error {
		code, body, err := httpGet("http://" + admin + "/readyz")
		if err != nil {
			return err
		}
		got = fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
		if code == http.StatusOK || strings.Contains(body, "(") { // a reason names its cause
			return nil
		}
		return fmt.Errorf("%s", got)
	})
	return got
}
