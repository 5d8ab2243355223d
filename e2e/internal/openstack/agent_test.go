//go:build e2e

package openstack

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCloudWithAgentAndRestarts starts the fixture with RabbitMQ and the incumbent
// neutron-metadata-agent, asks the agent over its UNIX socket as haproxy would (network id and
// X-Forwarded-For only) and gets the VM's metadata from nova; then stops and restarts neutron-server
// and nova, and records how nova answers while neutron-server is down.
func TestCloudWithAgentAndRestarts(t *testing.T) {
	if err := Available(true); err != nil {
		t.Skipf("OpenStack fixture cannot run here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const secret = "agent-secret"
	c, err := Start(ctx, Options{SharedSecret: secret, WithAgent: true, Logf: t.Logf, StopGrace: 5 * time.Second})
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
	n, err := c.CreateNetwork(ctx, "agent", "10.8.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := c.CreateVM(ctx, n, VMSpec{Hostname: "agent-vm", IP: "10.8.0.9"})
	if err != nil {
		t.Fatal(err)
	}

	agent := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", c.AgentSocket())
	}}}
	viaAgent := func(ip string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://metadata/openstack/latest/meta_data.json", nil)
		req.Header.Set("X-Neutron-Network-ID", n.ID)
		req.Header.Set("X-Forwarded-For", ip)
		resp, err := agent.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The agent learns about ports over RPC; give a fresh agent a moment.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := viaAgent(vm.IP)
		if code == http.StatusOK && strings.Contains(body, vm.InstanceID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent: %d %s, want 200 with %s", code, body, vm.InstanceID)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if code, body := viaAgent("10.8.0.77"); code != http.StatusNotFound {
		t.Errorf("agent, unknown address: %d %s, want 404", code, body)
	}

	signed := func() int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.NovaURL()+"/openstack/latest/meta_data.json", nil)
		req.Header.Set("X-Instance-ID", vm.InstanceID)
		req.Header.Set("X-Instance-ID-Signature", sign(secret, vm.InstanceID))
		req.Header.Set("X-Tenant-ID", vm.ProjectID)
		req.Header.Set("X-Forwarded-For", vm.IP)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	c.StopNeutron()
	t.Logf("nova (cache off) while neutron-server is down answers %d", signed())
	if err := c.StartNeutron(ctx); err != nil {
		t.Fatal(err)
	}
	if code := signed(); code != http.StatusOK {
		t.Errorf("nova after neutron-server restart: %d, want 200", code)
	}
	if code, body := viaAgent(vm.IP); code != http.StatusOK || !strings.Contains(body, vm.InstanceID) {
		t.Errorf("agent after neutron-server restart: %d %s, want 200", code, body)
	}
	// With nova's cache on, an instance read within the window survives neutron-server going away.
	if err := c.SetNovaCacheExpiration(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if code := signed(); code != http.StatusOK {
		t.Fatalf("nova with cache on: %d, want 200", code)
	}
	c.StopNeutron()
	if code := signed(); code != http.StatusOK {
		t.Errorf("nova (cache on, entry fresh) while neutron-server is down: %d, want 200", code)
	}
	if err := c.StartNeutron(ctx); err != nil {
		t.Fatal(err)
	}
	c.StopNova()
	if code := signed(); code != 0 {
		t.Errorf("nova stopped still answers %d", code)
	}
	if err := c.StartNova(ctx); err != nil {
		t.Fatal(err)
	}
	if code := signed(); code != http.StatusOK {
		t.Errorf("nova after restart: %d, want 200", code)
	}
}
