//go:build e2e

package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/clients"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
	"github.com/metaproxy/metaproxy/pkg/listen/listentest"
)

const (
	e2eSecret = "e2e-shared-secret"
	nodeID    = "e2e-node"
)

// vm is one VM of the suite: its Neutron port and nova instance, and its namespace.
type vm struct {
	os       openstack.VM
	ns       *vmnet.VM
	key      string
	userData string
}

// env is everything the scenarios run on.
type env struct {
	t        *testing.T
	dir, bin string
	cloud    *openstack.Cloud
	fabric   *vmnet.Fabric
	recorder *novaRecorder
	ini      string
	// creds says how cmd/extproc and cmd/xds reach Neutron: noauth, or clouds.yaml entries.
	creds neutronCreds

	extproc, xds, dataplane         *proc
	extprocArgs, xdsArgs            []string
	extprocAdmin, xdsAdmin, dpAdmin string
	extprocSock, xdsAddr            string
	pki                             *labPKI

	nets map[string]openstack.Network
	nsNs map[string]*vmnet.Network
	vms  map[string]*vm
}

// setup brings up the scenarios' cloud with the suite's auth mode (suiteAuth): cmd/extproc
// authenticates with a password, cmd/xds with an application credential.
func setup(t *testing.T, ctx context.Context) *env {
	return setupWith(t, ctx, setupOptions{Auth: suiteAuth(t), ExtprocCloud: cloudExtproc, XDSCloud: cloudXDSAppCred})
}

// setupOptions vary the scenarios' cloud.
type setupOptions struct {
	Auth openstack.Auth
	// ExtprocCloud and XDSCloud are the clouds.yaml entries (see keystoneCredentials) of each
	// service with AuthKeystone.
	ExtprocCloud, XDSCloud string
	// TokenExpiration is Keystone's [token] expiration (zero: an hour).
	TokenExpiration time.Duration
	// NovaCacheExpiration is nova's metadata cache (zero: off).
	NovaCacheExpiration time.Duration
}

func setupWith(t *testing.T, ctx context.Context, so setupOptions) *env {
	if err := openstack.Available(false); err != nil {
		t.Skipf("the e2e suite cannot run here: %v", err)
	}
	e := newEnv(t, ctx, openstack.Options{Auth: so.Auth, TokenExpiration: so.TokenExpiration, NovaCacheExpiration: so.NovaCacheExpiration})
	e.creds = e.neutronCredentials(ctx, so.ExtprocCloud, so.XDSCloud)

	// Two networks with the same CIDR; two VMs on the first, one on the second with the same address.
	for _, name := range []string{"net-a", "net-b"} {
		e.addNetwork(ctx, name)
	}
	e.addVM(ctx, "a1", "net-a", "10.0.0.5")
	e.addVM(ctx, "a2", "net-a", "10.0.0.6")
	e.addVM(ctx, "b1", "net-b", "10.0.0.5")

	// Configured as an operator would: neutron's metadata_agent.ini, a clouds.yaml entry (or a
	// noauth Neutron URL).
	e.ini = filepath.Join(e.dir, "metadata_agent.ini")
	writeFile(t, e.ini, fmt.Sprintf("[DEFAULT]\nmetadata_proxy_shared_secret = %s\nnova_metadata_host = 127.0.0.1\nnova_metadata_port = %d\nnova_metadata_protocol = http\n", e2eSecret, e.recorder.port()))
	// The secure defaults: cmd/extproc on a UNIX socket with the peer check (default allow-list:
	// root, which the data plane runs as here), cmd/xds over mutual TLS with the node's own
	// certificate, the data plane configured from `xds bootstrap` alone.
	// The socket's directory is open to every user, as /run/metaproxy is: its own mode (0660) and
	// the peer check are what keep others out (scenario 7 tries).
	e.extprocSock = filepath.Join(listentest.SharedDir(t), "extproc.sock")
	e.extprocAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.extprocArgs = []string{filepath.Join(e.bin, "extproc"), "--listen", "unix://" + e.extprocSock, "--admin-listen", e.extprocAdmin,
		"--metadata-agent-ini", e.ini, "--log-format", "json"}
	e.extprocArgs = append(e.extprocArgs, e.creds.extproc...)
	e.extproc = startProc(t, e.dir, "extproc", e.creds.env, e.extprocArgs...)
	eventually(t, 30*time.Second, "extproc ready", func() error { return ready("http://" + e.extprocAdmin + "/readyz") })

	e.pki = newLabPKI(t, e.dir, e.bin, nodeID)
	e.xdsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	xdsAdmin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.xdsAdmin = xdsAdmin
	e.xdsArgs = append([]string{filepath.Join(e.bin, "xds"), "--listen", e.xdsAddr, "--admin-listen", xdsAdmin,
		"--source", "neutron", "--neutron-mode", "all", "--node-id", nodeID,
		"--metadata-agent-ini", e.ini, "--extproc-address", "unix://" + e.extprocSock, "--poll-interval", "1s"}, e.pki.xdsArgs()...)
	e.xdsArgs = append(e.xdsArgs, e.creds.xds...)
	e.xds = startProc(t, e.dir, "xds", e.creds.env, e.xdsArgs...)
	eventually(t, 30*time.Second, "xds ready", func() error { return ready("http://" + xdsAdmin + "/readyz") })

	dpAdminPort := freePort(t)
	e.dpAdmin = fmt.Sprintf("127.0.0.1:%d", dpAdminPort)
	e.dataplane = startDataPlane(t, e.dir, e.bin, e.pki, e.xdsAddr, dpAdminPort)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{e.extproc, e.xds, e.dataplane} {
				t.Logf("---- %s log:\n%s", p.name, tail(p.logs(), 60))
			}
		}
	})
	e.waitNetwork(t, "net-a", true)
	e.waitNetwork(t, "net-b", true)
	return e
}

// newEnv builds the binaries and starts what every e2e test stands on: the OpenStack fixture (with
// o's options, the suite's secret), the namespace fabric and the recorder in front of nova. All of
// it is stopped when the test ends.
func newEnv(t *testing.T, ctx context.Context, o openstack.Options) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), nets: map[string]openstack.Network{}, nsNs: map[string]*vmnet.Network{}, vms: map[string]*vm{}}
	e.bin = filepath.Join(e.dir, "bin")
	buildBinaries(t, e.bin)
	o.BaseDir, o.SharedSecret, o.Logf, o.StopGrace = filepath.Join(e.dir, "openstack"), e2eSecret, t.Logf, 5*time.Second
	t0 := time.Now()
	cloud, err := openstack.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	e.cloud = cloud
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("OpenStack logs:\n%s", cloud.Logs())
		}
		if err := cloud.Close(); err != nil {
			t.Errorf("close cloud: %v", err)
		}
	})
	t.Logf("OpenStack up in %s (agent: %v)", time.Since(t0).Round(100*time.Millisecond), o.WithAgent)
	if e.fabric, err = vmnet.New(ctx, vmnet.Options{Logf: t.Logf}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.fabric.Close(); err != nil {
			t.Errorf("close namespaces: %v", err)
		}
	})
	host, port := cloud.NovaHostPort()
	e.recorder = startRecorder(t, fmt.Sprintf("%s:%d", host, port))
	return e
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// addNetwork creates a network in Neutron and, as the DHCP agent would, its qdhcp namespace.
func (e *env) addNetwork(ctx context.Context, name string) {
	e.t.Helper()
	n, err := e.cloud.CreateNetwork(ctx, name, "10.0.0.0/24")
	if err != nil {
		e.t.Fatal(err)
	}
	e.nets[name] = n
	if e.nsNs[name], err = e.fabric.AddNetwork(ctx, vmnet.NetworkSpec{ID: n.ID, CIDR: n.CIDR, DHCPIP: n.DHCPIP, DHCPMAC: n.DHCPMAC}); err != nil {
		e.t.Fatal(err)
	}
}

// addVM creates a port and a nova instance (with user data, metadata and a key), and the VM's namespace.
func (e *env) addVM(ctx context.Context, name, network, ip string) *vm {
	e.t.Helper()
	v := &vm{key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + strings.Repeat(name, 8) + " " + name + "@e2e", userData: "#cloud-config\nhostname: " + name + "\n"}
	var err error
	v.os, err = e.cloud.CreateVM(ctx, e.nets[network], openstack.VMSpec{Hostname: "vm-" + name, IP: ip,
		UserData: []byte(v.userData), Metadata: map[string]string{"role": name}, PublicKeys: map[string]string{"key-" + name: v.key}})
	if err != nil {
		e.t.Fatal(err)
	}
	if v.ns, err = e.fabric.AddVM(ctx, e.nsNs[network], vmnet.VMSpec{Name: name, IP: v.os.IP, MAC: v.os.MAC}); err != nil {
		e.t.Fatal(err)
	}
	e.vms[name] = v
	return v
}

func listenerName(n openstack.Network) string { return "metadata-network-" + n.ID + "-ipv4" }

func (e *env) waitNetwork(t *testing.T, name string, present bool) {
	t.Helper()
	ln := listenerName(e.nets[name])
	waitListeners(t, e.dpAdmin, 30*time.Second, fmt.Sprintf("listener of %s present=%v", name, present), func(names string) bool {
		return strings.Contains(names, ln) == present
	})
}

// metaData is the part of nova's meta_data.json the scenarios check.
type metaData struct {
	UUID       string            `json:"uuid"`
	Hostname   string            `json:"hostname"`
	Name       string            `json:"name"`
	ProjectID  string            `json:"project_id"`
	PublicKeys map[string]string `json:"public_keys"`
	Meta       map[string]string `json:"meta"`
}

func (e *env) curl(t *testing.T, v *vm, method, path string, h http.Header, body []byte) clients.Response {
	t.Helper()
	return curlVM(t, v, method, path, h, body)
}

// curlVM sends one request with curl from v's namespace (40 s at most); a transport failure fails
// the test.
func curlVM(t *testing.T, v *vm, method, path string, h http.Header, body []byte) clients.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	r, err := clients.Curl(ctx, v.ns, method, path, h, body)
	if err != nil {
		t.Fatalf("curl %s %s from %s: %v", method, path, v.ns.Namespace, err)
	}
	return r
}

// ownMetadata asserts that v got its own meta_data.json.
func ownMetadata(t *testing.T, v *vm, r clients.Response) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: status %d: %s", v.ns.Namespace, r.Status, r.Body)
	}
	var md metaData
	if err := json.Unmarshal(r.Body, &md); err != nil {
		t.Fatalf("%s: meta_data.json: %v: %s", v.ns.Namespace, err, r.Body)
	}
	if md.UUID != v.os.InstanceID || md.Hostname != v.os.Hostname || md.PublicKeys[keyName(v)] != v.key {
		t.Fatalf("%s got someone else's metadata: uuid %s hostname %s keys %v; want %s %s", v.ns.Namespace, md.UUID, md.Hostname, md.PublicKeys, v.os.InstanceID, v.os.Hostname)
	}
}

func keyName(v *vm) string { return "key-" + v.ns.Name }

// forgedIdentity is what a VM sends to pass for victim: victim's instance id twice, another tenant,
// a correct signature of victim's id (as if the secret had leaked), X-Forwarded-For with victim's
// address, and the headers neutron's proxies set (X-Neutron-*, X-OVN-Network-ID) naming
// otherNetwork. None of it may change what the VM gets.
func forgedIdentity(victim *vm, otherNetwork string) http.Header {
	forged := http.Header{}
	forged["X-Instance-ID"] = []string{victim.os.InstanceID, victim.os.InstanceID}
	forged["X-Tenant-ID"] = []string{"someone-else"}
	forged["X-Instance-ID-Signature"] = []string{signature(e2eSecret, victim.os.InstanceID)}
	forged["x-forwarded-for"] = []string{victim.os.IP, "10.0.0.6"}
	forged["X-Neutron-Network-ID"] = []string{otherNetwork}
	forged["X-NEUTRON-ROUTER-ID"] = []string{"router"}
	forged["X-Ovn-Network-Id"] = []string{otherNetwork}
	return forged
}

// cloudInitReadsOwn runs cloud-init's OpenStack reader in v and checks that it read v's own
// metadata, user data and key.
func cloudInitReadsOwn(t *testing.T, ctx context.Context, v *vm) {
	t.Helper()
	res, err := clients.CloudInitRead(ctx, v.ns, clients.CloudInitOptions{Require: []string{"userdata", "networkdata"}})
	if err != nil {
		t.Fatalf("%s: %v", v.ns.Name, err)
	}
	if res.Metadata.UUID != v.os.InstanceID || string(res.UserData) != v.userData || res.Metadata.PublicKeys[keyName(v)] != v.key {
		t.Errorf("%s: cloud-init read uuid %s, user data %q, keys %v", v.ns.Name, res.Metadata.UUID, res.UserData, res.Metadata.PublicKeys)
	}
}

func signature(secret, id string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil))
}

// TestMetadataPath brings up real neutron-server and nova, the namespaces, cmd/xds, cmd/extproc and
// the data plane once, and runs the scenarios of the e2e issue in order, each reported by name.
func TestMetadataPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	e := setup(t, ctx)

	t.Run("1_each_VM_gets_its_own_metadata_on_overlapping_networks", func(t *testing.T) {
		for _, name := range []string{"a1", "a2", "b1"} {
			v := e.vms[name]
			ownMetadata(t, v, e.curl(t, v, "GET", "/openstack/latest/meta_data.json", nil, nil))
			if r := e.curl(t, v, "GET", "/openstack/latest/user_data", nil, nil); r.Status != 200 || string(r.Body) != v.userData {
				t.Errorf("%s user_data: %d %q", name, r.Status, r.Body)
			}
			if r := e.curl(t, v, "GET", "/openstack/latest/network_data.json", nil, nil); r.Status != 200 || !json.Valid(r.Body) {
				t.Errorf("%s network_data.json: %d %s", name, r.Status, r.Body)
			}
			if r := e.curl(t, v, "GET", "/latest/user-data", nil, nil); r.Status != 200 || string(r.Body) != v.userData {
				t.Errorf("%s EC2 user-data: %d %q", name, r.Status, r.Body)
			}
			if r := e.curl(t, v, "GET", "/latest/meta-data/hostname", nil, nil); r.Status != 200 || !strings.HasPrefix(string(r.Body), "vm-"+name) {
				t.Errorf("%s EC2 hostname: %d %q", name, r.Status, r.Body)
			}
		}
	})

	t.Run("2_cloud-init_reads_its_metadata", func(t *testing.T) {
		for _, name := range []string{"a1", "b1"} {
			cloudInitReadsOwn(t, ctx, e.vms[name])
		}
	})

	t.Run("3_forged_identity_headers_are_ignored", func(t *testing.T) {
		a1 := e.vms["a1"]
		ownMetadata(t, a1, e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", forgedIdentity(e.vms["b1"], e.nets["net-b"].ID), nil))
	})

	t.Run("4_errors_password_and_wrong_secret", func(t *testing.T) {
		ghost, err := e.fabric.AddVM(ctx, e.nsNs["net-a"], vmnet.VMSpec{Name: "ghost", IP: "10.0.0.77", MAC: "fa:16:3e:77:77:77"})
		if err != nil {
			t.Fatal(err)
		}
		r := e.curl(t, &vm{ns: ghost}, "GET", "/openstack/latest/meta_data.json", nil, nil)
		if r.Status != http.StatusNotFound || !strings.Contains(string(r.Body), "Instance was not found on network "+e.nets["net-a"].ID) {
			t.Errorf("address without a port: %d %s", r.Status, r.Body)
		}

		a2, b1 := e.vms["a2"], e.vms["b1"]
		if r := e.curl(t, a2, "POST", "/openstack/latest/password", nil, []byte("s3cret-pw")); r.Status != http.StatusOK {
			t.Errorf("password POST: %d %s", r.Status, r.Body)
		}
		if r := e.curl(t, a2, "GET", "/openstack/latest/password", nil, nil); r.Status != http.StatusOK || string(r.Body) != "s3cret-pw" {
			t.Errorf("password GET: %d %q", r.Status, r.Body)
		}
		if r := e.curl(t, a2, "POST", "/openstack/latest/password", nil, []byte("again")); r.Status != http.StatusConflict {
			t.Errorf("second password POST: %d %s, want 409", r.Status, r.Body)
		}
		if r := e.curl(t, b1, "POST", "/openstack/latest/password", nil, []byte(strings.Repeat("x", 1021))); r.Status != http.StatusBadRequest {
			t.Errorf("1021-byte password POST: %d %s, want 400", r.Status, r.Body)
		}

		// A wrong shared secret: nova's 403 reaches the VM.
		wrong := filepath.Join(e.dir, "wrong-secret")
		writeFile(t, wrong, "not-the-secret\n")
		e.restartExtproc(t, "--secret-file", wrong)
		r = e.curl(t, e.vms["a1"], "GET", "/openstack/latest/meta_data.json", nil, nil)
		if r.Status != http.StatusForbidden {
			t.Errorf("wrong secret: %d %s, want nova's 403", r.Status, r.Body)
		}
		// ... and cmd/extproc, which asked to see nova's answer to that first request, says why.
		eventually(t, 5*time.Second, "extproc logs and counts the refused signature", func() error {
			if !strings.Contains(e.extproc.logs(), "nova refused the signature") {
				return fmt.Errorf("no 'nova refused the signature' line in the extproc log")
			}
			_, metrics, err := httpGet("http://" + e.extprocAdmin + "/metrics")
			if err != nil {
				return err
			}
			if !strings.Contains(metrics, `metaproxy_extproc_nova_verdicts_total{`) || !strings.Contains(metrics, `status="403"`) {
				return fmt.Errorf("no 403 in metaproxy_extproc_nova_verdicts_total")
			}
			return nil
		})
		e.restartExtproc(t)
		ownMetadata(t, e.vms["a1"], e.curl(t, e.vms["a1"], "GET", "/openstack/latest/meta_data.json", nil, nil))
	})

	t.Run("5_networks_come_and_go_without_restarts", func(t *testing.T) {
		e.addNetwork(ctx, "net-c")
		c1 := e.addVM(ctx, "c1", "net-c", "10.0.0.5")
		e.waitNetwork(t, "net-c", true)
		ownMetadata(t, c1, e.curl(t, c1, "GET", "/openstack/latest/meta_data.json", nil, nil))

		if err := e.cloud.DeleteVM(ctx, c1.os); err != nil {
			t.Fatal(err)
		}
		if err := e.cloud.DeleteNetwork(ctx, e.nets["net-c"]); err != nil {
			t.Fatal(err)
		}
		e.waitNetwork(t, "net-c", false)
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if r, err := clients.Curl(rctx, c1.ns, "GET", "/openstack/latest/meta_data.json", nil, nil); err == nil {
			t.Errorf("deleted network still answers: %d %s", r.Status, r.Body)
		}
		// The other networks were not disturbed.
		ownMetadata(t, e.vms["b1"], e.curl(t, e.vms["b1"], "GET", "/openstack/latest/meta_data.json", nil, nil))
	})

	t.Run("5b_router_mode_through_neutron", func(t *testing.T) { routerMode(t, ctx, e) })

	t.Run("6_outages_fail_closed", func(t *testing.T) {
		a1 := e.vms["a1"]
		fresh := e.addVM(ctx, "a3", "net-a", "10.0.0.8") // never asked before Neutron goes away
		// Nova itself asks Neutron to build metadata; with its cache on (15 s by default in
		// production) an instance read recently is served without Neutron, as in a real cloud.
		if err := e.cloud.SetNovaCacheExpiration(ctx, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		ownMetadata(t, a1, e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil))

		e.cloud.StopNeutron()
		if r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusOK {
			t.Errorf("neutron down, VM resolved before: %d %s, want 200 from the cache", r.Status, r.Body)
		}
		if r := e.curl(t, fresh, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "Neutron is unreachable") {
			t.Errorf("neutron down, VM never resolved: %d %s, want 503", r.Status, r.Body)
		}
		if err := e.cloud.StartNeutron(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, "the fresh VM resolves once Neutron is back", func() error {
			if r := e.curl(t, fresh, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusOK {
				return fmt.Errorf("%d %s", r.Status, r.Body)
			}
			return nil
		})

		e.cloud.StopNova()
		if r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusServiceUnavailable {
			t.Errorf("nova down: %d %s, want 503", r.Status, r.Body)
		}
		if err := e.cloud.StartNova(ctx); err != nil {
			t.Fatal(err)
		}

		before := len(e.recorder.all())
		e.extproc.stop()
		r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil)
		if r.Status < 500 {
			t.Errorf("ext_proc down: %d %s, want 5xx", r.Status, r.Body)
		}
		if after := len(e.recorder.all()); after != before {
			t.Errorf("with ext_proc down, %d requests reached nova", after-before)
		}
		e.restartExtproc(t)
		// The data plane's gRPC connection to ext_proc comes back within its reconnect backoff.
		eventually(t, 10*time.Second, "metadata again once ext_proc is back", func() error {
			if r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != http.StatusOK {
				return fmt.Errorf("%d %s", r.Status, r.Body)
			}
			return nil
		})
	})

	t.Run("7_only_the_nodes_envoy_gets_signatures", func(t *testing.T) { onlyTheNodesEnvoyGetsSignatures(t, e) })
	t.Run("8_only_an_authenticated_envoy_gets_configuration", func(t *testing.T) { onlyAnAuthenticatedEnvoyGetsConfiguration(t, e) })
	t.Run("9_extproc_on_TCP_with_mutual_TLS", func(t *testing.T) { extprocOverTCPWithMutualTLS(t, e) })

	t.Run("nova_never_received_an_unsigned_request", func(t *testing.T) {
		all := e.recorder.all()
		if len(all) == 0 {
			t.Fatal("the recorder saw no request at all")
		}
		if bad := e.recorder.unsigned(); len(bad) > 0 {
			t.Fatalf("%d of %d requests reached nova without exactly one signed identity: %+v", len(bad), len(all), bad)
		}
		t.Logf("%d requests reached nova, every one signed", len(all))
	})
}

// restartExtproc restarts cmd/extproc with its usual flags plus extra, and waits until it is ready.
func (e *env) restartExtproc(t *testing.T, extra ...string) {
	t.Helper()
	e.extproc.stop()
	e.extproc.argv = append(append([]string(nil), e.extprocArgs...), extra...)
	if err := e.extproc.start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "extproc ready again", func() error { return ready("http://" + e.extprocAdmin + "/readyz") })
}
