//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/clients"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// fixtureVM is one VM of the smoke test: its Neutron port and nova instance, and its namespace.
type fixtureVM struct {
	os     openstack.VM
	ns     *vmnet.VM
	key    string
	tenant string
}

// TestFixtureNovaJudgesSignatures proves the fixture everything else runs on: real nova checks the
// signatures and tenants of requests for instances the fixture created (from the host, signed with
// openssl, not our code), VM namespaces on two networks with the same CIDR reach their own
// network's 169.254.169.254, and cloud-init's reader runs in a VM namespace.
func TestFixtureNovaJudgesSignatures(t *testing.T) {
	if err := openstack.Available(false); err != nil {
		t.Skipf("OpenStack fixture cannot run here: %v", err)
	}
	if _, err := exec.LookPath("/usr/bin/cloud-init"); err != nil {
		t.Skip("cloud-init missing: run `make deps` as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const secret = "e2e-fixture-secret"

	t0 := time.Now()
	cloud, err := openstack.Start(ctx, openstack.Options{BaseDir: t.TempDir(), SharedSecret: secret, Logf: t.Logf, StopGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("OpenStack logs:\n%s", cloud.Logs())
		}
		if err := cloud.Close(); err != nil {
			t.Errorf("close cloud: %v", err)
		}
	})
	t.Logf("fixture start took %s", time.Since(t0).Round(100*time.Millisecond))
	fabric, err := vmnet.New(ctx, vmnet.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fabric.Close(); err != nil {
			t.Errorf("close fabric: %v", err)
		}
	})

	// Two networks with the same CIDR, two VMs on the first (one in another project), one on the second
	// with the same address as the first VM.
	nets := map[string]*vmnet.Network{}
	osNets := map[string]openstack.Network{}
	for _, name := range []string{"net-a", "net-b"} {
		n, err := cloud.CreateNetwork(ctx, name, "10.0.0.0/24")
		if err != nil {
			t.Fatal(err)
		}
		osNets[name] = n
		if nets[name], err = fabric.AddNetwork(ctx, vmnet.NetworkSpec{ID: n.ID, CIDR: n.CIDR, DHCPIP: n.DHCPIP, DHCPMAC: n.DHCPMAC}); err != nil {
			t.Fatal(err)
		}
	}
	specs := []struct {
		net, name, ip, project string
	}{
		{"net-a", "a1", "10.0.0.5", ""},
		{"net-a", "a2", "10.0.0.6", "b1c2d3e4f5a64b7c8d9e0f1a2b3c4d5e"},
		{"net-b", "b1", "10.0.0.5", ""},
	}
	var vms []fixtureVM
	for _, s := range specs {
		key := fmt.Sprintf("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI%s %s@e2e", strings.Repeat(s.name, 8), s.name)
		v, err := cloud.CreateVM(ctx, osNets[s.net], openstack.VMSpec{Hostname: "vm-" + s.name, IP: s.ip, ProjectID: s.project,
			UserData: []byte("#cloud-config\nhostname: vm-" + s.name + "\n"), Metadata: map[string]string{"vm": s.name},
			PublicKeys: map[string]string{"key-" + s.name: key}})
		if err != nil {
			t.Fatal(err)
		}
		ns, err := fabric.AddVM(ctx, nets[s.net], vmnet.VMSpec{Name: s.name, IP: v.IP, MAC: v.MAC})
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, fixtureVM{os: v, ns: ns, key: key, tenant: v.ProjectID})
	}

	t.Run("nova judges signatures", func(t *testing.T) {
		for _, vm := range vms {
			sig := opensslSign(t, secret, vm.os.InstanceID)
			tests := map[string]struct {
				sig, tenant string
				want        int
			}{
				"right signature": {sig, vm.tenant, http.StatusOK},
				"wrong signature": {opensslSign(t, "not-the-secret", vm.os.InstanceID), vm.tenant, http.StatusForbidden},
				"wrong tenant":    {sig, "ffffffffffffffffffffffffffffffff", http.StatusNotFound},
				"empty signature": {"", vm.tenant, http.StatusForbidden},
			}
			for name, tc := range tests {
				t.Run(vm.ns.Name+"/"+name, func(t *testing.T) {
					code, body := novaGet(ctx, t, cloud.NovaURL()+"/openstack/latest/meta_data.json", vm.os.InstanceID, tc.tenant, tc.sig, vm.os.IP)
					if code != tc.want {
						t.Fatalf("nova answered %d, want %d: %s", code, tc.want, body)
					}
					if code != http.StatusOK {
						return
					}
					var md struct {
						UUID       string            `json:"uuid"`
						Hostname   string            `json:"hostname"`
						PublicKeys map[string]string `json:"public_keys"`
					}
					if err := json.Unmarshal(body, &md); err != nil {
						t.Fatal(err)
					}
					if md.UUID != vm.os.InstanceID || md.Hostname != vm.os.Hostname || md.PublicKeys["key-"+vm.ns.Name] != vm.key {
						t.Errorf("meta_data.json = %s, want uuid %s, hostname %s, key %q", body, vm.os.InstanceID, vm.os.Hostname, vm.key)
					}
				})
			}
			t.Run(vm.ns.Name+"/network_data names the port", func(t *testing.T) {
				code, body := novaGet(ctx, t, cloud.NovaURL()+"/openstack/latest/network_data.json", vm.os.InstanceID, vm.tenant, sig, vm.os.IP)
				if code != http.StatusOK || !bytes.Contains(body, []byte(vm.os.MAC)) {
					t.Errorf("network_data.json: %d %s, want 200 with MAC %s", code, body, vm.os.MAC)
				}
			})
		}
	})

	// A tiny metadata server on 169.254.169.254:80 in each qdhcp namespace that names its network
	// and echoes the caller's address.
	for name, n := range nets {
		for _, addr := range []struct{ network, address string }{
			{"tcp4", vmnet.MetadataIPv4 + ":80"},
			{"tcp6", "[" + vmnet.MetadataIPv6 + "%" + n.Interface + "]:80"},
		} {
			l, err := vmnet.Listen(ctx, n.Namespace, addr.network, addr.address)
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: cannedOpenStack(name), ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { _ = srv.Close() })
		}
	}

	t.Run("VMs reach their own network's metadata address", func(t *testing.T) {
		for i, vm := range vms {
			resp, err := clients.Curl(ctx, vm.ns, http.MethodGet, "/openstack/latest/meta_data.json", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var md struct{ UUID, Hostname string }
			if err := json.Unmarshal(resp.Body, &md); err != nil || resp.Status != http.StatusOK {
				t.Fatalf("%s: %d %s (%v)", vm.ns.Name, resp.Status, resp.Body, err)
			}
			want := specs[i].net + "/" + vm.os.IP
			if md.Hostname != want {
				t.Errorf("%s: answered by %q, want %q (its own network, its own address)", vm.ns.Name, md.Hostname, want)
			}
		}
	})

	t.Run("VMs reach fe80::a9fe:a9fe from their EUI-64 link-local address", func(t *testing.T) {
		for i, vm := range vms {
			url := "http://[" + vmnet.MetadataIPv6 + "%25" + vm.ns.Interface + "]/openstack/latest/meta_data.json"
			resp, err := clients.Curl(ctx, vm.ns, http.MethodGet, url, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var md struct{ Hostname string }
			if err := json.Unmarshal(resp.Body, &md); err != nil || resp.Status != http.StatusOK {
				t.Fatalf("%s: %d %s (%v)", vm.ns.Name, resp.Status, resp.Body, err)
			}
			mac, err := net.ParseMAC(vm.os.MAC)
			if err != nil {
				t.Fatal(err)
			}
			eui := net.IP{0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]}
			if want := specs[i].net + "/" + eui.String() + "%" + nets[specs[i].net].Interface; md.Hostname != want {
				t.Errorf("%s: answered %q, want %q (the link-local Neutron derives from the port MAC)", vm.ns.Name, md.Hostname, want)
			}
		}
	})

	t.Run("cloud-init reader", func(t *testing.T) {
		for i, vm := range vms {
			res, err := clients.CloudInitRead(ctx, vm.ns, clients.CloudInitOptions{Require: []string{"userdata", "networkdata", "ec2"}})
			if err != nil {
				t.Fatalf("%s: %v\n%s", vm.ns.Name, err, res.Raw)
			}
			wantHost := specs[i].net + "/" + vm.os.IP
			if res.Metadata.UUID != "canned-"+specs[i].net || res.Metadata.LocalHostname != wantHost ||
				string(res.UserData) != "#cloud-config\n" || res.EC2Metadata["local-ipv4"] != vm.os.IP {
				t.Errorf("%s: cloud-init read %s", vm.ns.Name, res.Raw)
			}
		}
	})
}

// opensslSign computes the instance id signature the way an operator would check it by hand.
func opensslSign(t *testing.T, secret, instanceID string) string {
	t.Helper()
	cmd := exec.Command("openssl", "dgst", "-sha256", "-hmac", secret, "-r")
	cmd.Stdin = strings.NewReader(instanceID)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl: %v", err)
	}
	return strings.Fields(string(out))[0]
}

// novaGet sends what neutron-metadata-agent sends to nova.
func novaGet(ctx context.Context, t *testing.T, url, instanceID, tenant, sig, forwardedFor string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Instance-ID", instanceID)
	req.Header.Set("X-Tenant-ID", tenant)
	req.Header.Set("X-Instance-ID-Signature", sig)
	req.Header.Set("X-Forwarded-For", forwardedFor)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return resp.StatusCode, buf.Bytes()
}

// cannedOpenStack serves a minimal OpenStack and EC2 metadata tree whose identity is the network
// name and the caller's address, so that a reader shows which server it reached and from where.
func cannedOpenStack(network string) http.Handler {
	mux := http.NewServeMux()
	caller := func(r *http.Request) string {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		return host
	}
	mux.HandleFunc("GET /openstack", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "2018-08-27\nlatest\n")
	})
	mux.HandleFunc("GET /openstack/{version}/meta_data.json", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"uuid": "canned-" + network, "hostname": network + "/" + caller(r),
			"public_keys": map[string]string{"canned": "ssh-ed25519 AAAA canned"}})
	})
	mux.HandleFunc("GET /openstack/{version}/user_data", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "#cloud-config\n")
	})
	mux.HandleFunc("GET /openstack/{version}/network_data.json", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"links": [], "networks": [], "services": []}`)
	})
	mux.HandleFunc("GET /latest/meta-data/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/latest/meta-data/":
			fmt.Fprint(w, "instance-id\nlocal-ipv4")
		case "/latest/meta-data/instance-id":
			fmt.Fprint(w, "i-canned")
		case "/latest/meta-data/local-ipv4":
			fmt.Fprint(w, caller(r))
		default:
			http.NotFound(w, r)
		}
	})
	return mux
}
