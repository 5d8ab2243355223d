//go:build e2e

package openstack

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCloudServesSignedMetadata starts the fixture, without and with Keystone, and checks that nova
// serves the instance row CreateVM made (user data, metadata, key, network_data from the port) to a
// correctly signed request. With Keystone, nova builds that answer with its own service user's
// calls to neutron-server over TLS.
func TestCloudServesSignedMetadata(t *testing.T) {
	if err := Available(false); err != nil {
		t.Skipf("OpenStack fixture cannot run here: %v", err)
	}
	for _, auth := range []Auth{AuthNoauth, AuthKeystone} {
		t.Run(string(auth), func(t *testing.T) {
			if auth == AuthKeystone {
				if err := KeystoneAvailable(); err != nil {
					t.Skip(err)
				}
			}
			servesSignedMetadata(t, auth)
		})
	}
}

func servesSignedMetadata(t *testing.T, auth Auth) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const secret = "unit-secret"
	t0 := time.Now()
	c, err := Start(ctx, Options{SharedSecret: secret, Logf: t.Logf, StopGrace: 5 * time.Second, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs())
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("fixture up in %s", time.Since(t0))

	n, err := c.CreateNetwork(ctx, "unit", "10.9.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := c.CreateVM(ctx, n, VMSpec{Hostname: "unit-vm", IP: "10.9.0.7", UserData: []byte("#cloud-config\n"),
		Metadata: map[string]string{"role": "unit"}, PublicKeys: map[string]string{"k1": "ssh-ed25519 AAAA unit"}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, []byte) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.NovaURL()+path, nil)
		req.Header.Set("X-Instance-ID", vm.InstanceID)
		req.Header.Set("X-Instance-ID-Signature", sign(secret, vm.InstanceID))
		req.Header.Set("X-Tenant-ID", vm.ProjectID)
		req.Header.Set("X-Forwarded-For", vm.IP)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for _, path := range []string{"/openstack/latest/meta_data.json", "/openstack/latest/user_data",
		"/openstack/latest/network_data.json", "/latest/meta-data/", "/latest/meta-data/local-ipv4", "/openstack/latest/password"} {
		code, body := get(path)
		t.Logf("%s -> %d %s", path, code, body)
		if code != 200 {
			t.Errorf("%s: got %d", path, code)
		}
	}
	_, body := get("/openstack/latest/meta_data.json")
	var md struct {
		UUID       string            `json:"uuid"`
		Hostname   string            `json:"hostname"`
		PublicKeys map[string]string `json:"public_keys"`
		Meta       map[string]string `json:"meta"`
	}
	if err := json.Unmarshal(body, &md); err != nil {
		t.Fatal(err)
	}
	if md.UUID != vm.InstanceID || md.Hostname != vm.Hostname || md.PublicKeys["k1"] != "ssh-ed25519 AAAA unit" || md.Meta["role"] != "unit" {
		t.Errorf("meta_data.json = %+v, want uuid %s hostname %s and the key", md, vm.InstanceID, vm.Hostname)
	}
	if _, err := c.CreateRouter(ctx, "unit-router", n); err != nil {
		t.Error(err)
	}
	if auth != AuthKeystone {
		return
	}
	// Keystone's request log is readable: the admin, neutron's and nova's service users got tokens.
	reqs, err := c.KeystoneRequests()
	if err != nil {
		t.Fatal(err)
	}
	agents := map[string]bool{}
	for _, r := range reqs {
		if r.Method == http.MethodPost && r.URI == "/v3/auth/tokens" && r.Status == http.StatusCreated {
			agents[strings.Fields(r.UserAgent)[0]] = true
		}
	}
	t.Logf("token requests by user agent: %v", agents)
	if len(agents) < 2 {
		t.Errorf("Keystone's log names %v as issuers of tokens, want gophercloud (the admin) and keystonemiddleware or nova", agents)
	}
}

// sign is neutron's sign_instance_id: lowercase hex HMAC-SHA256 of the instance id.
func sign(secret, instanceID string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(instanceID))
	return hex.EncodeToString(mac.Sum(nil))
}
