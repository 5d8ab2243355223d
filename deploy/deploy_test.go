// Package deploy holds no code: its tests check the deployment assets under deploy/ (systemd units and
// the sample /etc/metaproxy, the compose stack, the Kubernetes manifests, the Dockerfiles) against the
// binaries and packages they configure, and run the systemd units' ExecStart lines for real.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	// Types that appear in typed_config of the bootstraps checked here.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

// minEnvoy is the oldest Envoy that serves listeners on one address in several network namespaces
// (envoy/README.md; cmd/xds refuses older ones, serve.MinEnvoyVersion).
var minEnvoy = [2]int{1, 36}

// ---------------------------------------------------------------------------------------------
// YAML helpers

// yamlDocs decodes every document of a YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

// get walks m along keys (string keys for maps, int for lists); nil when a step is missing.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string { s, _ := get(v, path...).(string); return s }
func list(v any, path ...any) []any { l, _ := get(v, path...).([]any); return l }
func strs(v any, path ...any) []string {
	var out []string
	for _, e := range list(v, path...) {
		out = append(out, fmt.Sprint(e))
	}
	return out
}

// flagValue returns the value of --name in args (--name=v or --name v), and whether it was found.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

func portOf(t *testing.T, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return n
}

// checkPinned fails unless image has an explicit tag (or digest) that is not "latest".
func checkPinned(t *testing.T, where, image string) {
	t.Helper()
	if strings.Contains(image, "@sha256:") {
		return
	}
	slash := strings.LastIndex(image, "/")
	colon := strings.LastIndex(image, ":")
	if colon <= slash || image[colon+1:] == "latest" || image[colon+1:] == "" {
		t.Errorf("%s: image %q is not pinned to a version", where, image)
	}
}

var envoyTag = regexp.MustCompile(`^(?:docker\.io/)?envoyproxy/envoy:v(\d+)\.(\d+)\.(\d+)$`)

// checkEnvoyImage fails unless image is the official Envoy image at minEnvoy or newer.
func checkEnvoyImage(t *testing.T, where, image string) {
	t.Helper()
	m := envoyTag.FindStringSubmatch(image)
	if m == nil {
		t.Errorf("%s: %q is not the official Envoy image with a vX.Y.Z tag", where, image)
		return
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < minEnvoy[0] || major == minEnvoy[0] && minor < minEnvoy[1] {
		t.Errorf("%s: %s is older than Envoy %d.%d, the first that keeps listeners on one address in different namespaces apart", where, image, minEnvoy[0], minEnvoy[1])
	}
}

// checkBootstrap parses path as an Envoy bootstrap into the v3 proto (every typed_config resolved)
// and runs its validation rules.
func checkBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	docs := yamlDocs(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d YAML documents, want 1", path, len(docs))
	}
	js, err := json.Marshal(docs[0])
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("%s is not an Envoy v3 bootstrap: %v", path, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &b
}

// checkGeneratedBootstrap checks that path is exactly what `xds bootstrap` prints for o.
func checkGeneratedBootstrap(t *testing.T, path string, o xdscmd.BootstrapOptions) {
	t.Helper()
	want, err := xdscmd.Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from `xds bootstrap --node-id %s --xds-address %s`; regenerate it", path, o.NodeID, o.XDSAddress)
	}
	checkBootstrap(t, path)
}

// ---------------------------------------------------------------------------------------------
// Every YAML file parses.

func TestEveryYAMLParses(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml" || strings.HasSuffix(path, ".yaml.example")) {
			n++
			if docs := yamlDocs(t, path); len(docs) == 0 {
				t.Errorf("%s: no YAML document", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("found %d YAML files under deploy/, expected the compose, Kubernetes and sample files", n)
	}
}

// ---------------------------------------------------------------------------------------------
// systemd

// unit is a parsed systemd unit: section -> key -> values in order (keys may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %d values, want 1", section, key, len(v))
	}
	return v[0]
}

// env returns the unit's Environment= assignments (systemd quoting: a value may be "K=V with spaces").
func (u unit) env() map[string]string {
	out := map[string]string{}
	for _, e := range u["Service"]["Environment"] {
		e = strings.Trim(e, `"`)
		if k, v, ok := strings.Cut(e, "="); ok {
			out[k] = v
		}
	}
	return out
}

func words(s string) []string { return strings.Fields(s) }

func TestSystemdUnits(t *testing.T) {
	extproc := parseUnit(t, "systemd/metaproxy-extproc.service")
	xds := parseUnit(t, "systemd/metaproxy-xds.service")
	envoy := parseUnit(t, "systemd/metaproxy-envoy.service")

	for name, u := range map[string]unit{"extproc": extproc, "xds": xds, "envoy": envoy} {
		t.Run(name+"/common", func(t *testing.T) {
			for key, want := range map[string]string{"Restart": "always", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes"} {
				if got := u.one(t, "Service", key); got != want {
					t.Errorf("%s=%s, want %s", key, got, want)
				}
			}
			if u.one(t, "Install", "WantedBy") != "multi-user.target" {
				t.Errorf("WantedBy is not multi-user.target")
			}
			if u["Service"]["User"] == nil || u.one(t, "Service", "User") == "root" {
				t.Errorf("runs as root")
			}
		})
	}

	t.Run("extproc", func(t *testing.T) {
		sock := parseUnit(t, "systemd/metaproxy-extproc.socket")
		for key, want := range map[string]string{"SocketUser": "metaproxy", "SocketGroup": "metaproxy", "SocketMode": "0660",
			"Service": "metaproxy-extproc.service"} {
			if got := sock.one(t, "Socket", key); got != want {
				t.Errorf("socket unit: %s=%s, want %s", key, got, want)
			}
		}
		if _, ok := sock["Socket"]["Accept"]; ok {
			t.Error("socket unit: Accept= would start one extproc per connection")
		}
		for _, key := range []string{"Requires", "After"} {
			if !slices.Contains(words(extproc.one(t, "Unit", key)), "metaproxy-extproc.socket") {
				t.Errorf("%s= lacks metaproxy-extproc.socket", key)
			}
		}
		if _, ok := extproc["Service"]["RuntimeDirectory"]; ok {
			t.Error("RuntimeDirectory= would remove the socket unit's /run/metaproxy when extproc stops")
		}
		if got := extproc.one(t, "Service", "CapabilityBoundingSet"); got != "" {
			t.Errorf("CapabilityBoundingSet=%s, want none", got)
		}
		creds := extproc["Service"]["LoadCredential"]
		if !slices.Contains(creds, "shared-secret:/etc/metaproxy/shared-secret") {
			t.Errorf("LoadCredential %v lacks shared-secret:/etc/metaproxy/shared-secret", creds)
		}
		args := words(extproc.one(t, "Service", "ExecStart"))
		if v, _ := flagValue(args, "secret-file"); v != "${CREDENTIALS_DIRECTORY}/shared-secret" {
			t.Errorf("--secret-file %q, want the credential", v)
		}
		cfg, _ := flagValue(args, "config")
		if cfg != "/etc/metaproxy/extproc.yaml" {
			t.Errorf("--config %q", cfg)
		}
		// extproc takes the socket unit's socket, and it is where cmd/xds sends Envoy.
		doc := yamlDocs(t, "systemd/etc-metaproxy/extproc.yaml")[0]
		xdsArgs := words(xds.one(t, "Service", "ExecStart"))
		addr, _ := flagValue(xdsArgs, "extproc-address")
		if doc["listen"] != "systemd" || "unix://"+sock.one(t, "Socket", "ListenStream") != addr || addr != "unix:///run/metaproxy/extproc.sock" {
			t.Errorf("extproc listens on %v, the socket unit on %s, xds sends Envoy to %q; want systemd and unix:///run/metaproxy/extproc.sock twice",
				doc["listen"], sock.one(t, "Socket", "ListenStream"), addr)
		}
		if _, ok := doc["secret_file"]; ok {
			t.Errorf("extproc.yaml names a secret file: the secret is a systemd credential")
		}
	})

	t.Run("envoy", func(t *testing.T) {
		caps := words(envoy.one(t, "Service", "AmbientCapabilities"))
		bound := words(envoy.one(t, "Service", "CapabilityBoundingSet"))
		for _, c := range []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"} {
			if !slices.Contains(caps, c) || !slices.Contains(bound, c) {
				t.Errorf("%s not in AmbientCapabilities %v and CapabilityBoundingSet %v", c, caps, bound)
			}
		}
		if !slices.Contains(words(envoy.one(t, "Service", "SupplementaryGroups")), "metaproxy") {
			t.Errorf("Envoy is not in the metaproxy group: it could not open extproc.sock")
		}
		if got := envoy.one(t, "Service", "RestrictNamespaces"); got != "net" {
			t.Errorf("RestrictNamespaces=%s, want net (setns into the qdhcp- namespaces)", got)
		}
		for _, key := range []string{"After", "Wants"} {
			deps := words(envoy.one(t, "Unit", key))
			for _, d := range []string{"metaproxy-extproc.service", "metaproxy-xds.service"} {
				if !slices.Contains(deps, d) {
					t.Errorf("%s= lacks %s", key, d)
				}
			}
		}
		args := words(envoy.one(t, "Service", "ExecStart"))
		// The flags Envoy accepts (envoy --help, "Command line options" in Envoy's docs) that the unit may use.
		known := map[string]bool{"--config-path": true, "--service-node": true, "--service-cluster": true, "--log-level": true,
			"--drain-time-s": true, "--parent-shutdown-time-s": true, "--drain-strategy": true, "--base-id": true, "--concurrency": true}
		for i := 1; i < len(args); i += 2 {
			if !known[args[i]] || i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				t.Errorf("ExecStart: %q is not a known Envoy flag with a value", args[i:])
			}
		}
		path, _ := flagValue(args, "config-path")
		if path != "/etc/metaproxy/envoy.yaml" {
			t.Fatalf("--config-path %q", path)
		}
		checkGeneratedBootstrap(t, "systemd/etc-metaproxy/envoy.yaml", xdscmd.BootstrapOptions{
			NodeID: "network-node-1", XDSAddress: "127.0.0.1:18000", AdminPort: 9901, APIType: "DELTA_GRPC"})
		b := checkBootstrap(t, "systemd/etc-metaproxy/envoy.yaml")
		xdsArgs := words(xds.one(t, "Service", "ExecStart"))
		listen, _ := flagValue(xdsArgs, "listen")
		ep := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if got := net.JoinHostPort(ep.GetAddress(), strconv.Itoa(int(ep.GetPortValue()))); got != listen {
			t.Errorf("the bootstrap sends Envoy to %s, cmd/xds listens on %s", got, listen)
		}
		node, _ := flagValue(args, "service-node")
		xdsNode, _ := flagValue(xdsArgs, "node-id")
		if node != "%H" || xdsNode != "%H" {
			t.Errorf("Envoy --service-node %q and xds --node-id %q must both be the host name (%%H)", node, xdsNode)
		}
	})

	t.Run("migration drop-in", func(t *testing.T) {
		d := parseUnit(t, "systemd/metaproxy-envoy.service.d/10-migration-coexist.conf")
		if d.one(t, "Service", "User") != "root" || len(d["Service"]) != 2 {
			t.Errorf("the migration drop-in must only switch Envoy to uid 0 (SO_REUSEPORT with haproxy's root-owned socket): %v", d)
		}
	})

	t.Run("sample layout", func(t *testing.T) {
		for _, f := range []string{"extproc.yaml", "envoy.yaml", "metadata_agent.ini", "clouds.yaml.example", "README.md"} {
			if _, err := os.Stat(filepath.Join("systemd/etc-metaproxy", f)); err != nil {
				t.Error(err)
			}
		}
		doc := yamlDocs(t, "systemd/etc-metaproxy/clouds.yaml.example")[0]
		// One user per service: cmd/extproc's grant (advsvc) is smaller than cmd/xds's (admin).
		for u, entry := range map[*unit]string{&extproc: "metaproxy-extproc", &xds: "metaproxy-xds"} {
			if str(doc, "clouds", entry, "auth", "auth_url") == "" {
				t.Errorf("clouds.yaml.example has no clouds.%s entry", entry)
			}
			if u.env()["OS_CLOUD"] != entry || u.env()["OS_CLIENT_CONFIG_FILE"] != "%d/clouds.yaml" {
				t.Errorf("OS_CLOUD / OS_CLIENT_CONFIG_FILE not set to the clouds.yaml credential's entry %s: %v", entry, u.env())
			}
		}
	})
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on copies of the units whose binaries are
// replaced by /bin/true (verify insists that ExecStart's program exists); any complaint fails.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: unit files only checked structurally")
	}
	dir := t.TempDir()
	units, _ := filepath.Glob("systemd/*.service")
	sockets, _ := filepath.Glob("systemd/*.socket")
	if len(units) != 4 || len(sockets) != 1 {
		t.Fatalf("units: %v %v", units, sockets)
	}
	units = append(units, sockets...)
	var paths []string
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		raw = regexp.MustCompile(`/usr/local/bin/[a-z]+`).ReplaceAll(raw, []byte("/bin/true"))
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput()
	if complaints := aboutUnits(out, dir, units); err != nil || len(complaints) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(complaints, "\n"))
	}
}

// aboutUnits returns the lines of systemd-analyze's output that concern the units under test: it
// also loads the host's units their dependencies name, and complains about those (e.g. Debian's
// keystone.service ordering itself After=keystone.service), which is not ours to fix.
func aboutUnits(out []byte, dir string, units []string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		ours := strings.Contains(l, dir)
		for _, u := range units {
			ours = ours || strings.HasPrefix(l, filepath.Base(u)+":")
		}
		if ours || (l != "" && !strings.Contains(l, ".service:") && !strings.Contains(l, ".socket:")) {
			lines = append(lines, l)
		}
	}
	return lines
}

// ---------------------------------------------------------------------------------------------
// ExecStart lines, for real.

// buildBinaries builds cmd/extproc and cmd/xds as `make build` does (without the version stamp).
func buildBinaries(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	for _, name := range []string{"extproc", "xds"} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "../cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
		}
		bins[name] = out
	}
	return bins
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// layout is a temporary stand-in for the paths the units use.
type layout struct {
	etc, creds, run, netns string
}

func newLayout(t *testing.T) layout {
	t.Helper()
	root := t.TempDir()
	l := layout{etc: filepath.Join(root, "etc/metaproxy"), creds: filepath.Join(root, "credentials"),
		run: filepath.Join(root, "run/metaproxy"), netns: filepath.Join(root, "run/netns")}
	for _, d := range []string{l.etc, l.creds, l.run, l.netns} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// path maps one of the node's paths into l.
func (l layout) path(p string) string {
	return strings.NewReplacer("/etc/metaproxy", l.etc, "/run/metaproxy", l.run, "/var/run/netns", l.netns).Replace(p)
}

// expand turns one unit's ExecStart into argv the way systemd would on the node, with the node's
// paths mapped into l: specifiers (%H, %d), ${VAR} inside a word, $VAR as separate words.
func (l layout) expand(t *testing.T, line string, env map[string]string, bins map[string]string, repl map[string]string) []string {
	t.Helper()
	host, _ := os.Hostname()
	sub := func(s string) string {
		s = strings.ReplaceAll(s, "${CREDENTIALS_DIRECTORY}", l.creds)
		s = strings.ReplaceAll(s, "%d", l.creds)
		s = strings.ReplaceAll(s, "%H", host)
		s = strings.ReplaceAll(s, "/etc/metaproxy", l.etc)
		s = strings.ReplaceAll(s, "/run/metaproxy", l.run)
		s = strings.ReplaceAll(s, "/var/run/netns", l.netns)
		for from, to := range repl {
			s = strings.ReplaceAll(s, from, to)
		}
		return s
	}
	var argv []string
	for _, w := range words(line) {
		if name, ok := strings.CutPrefix(w, "$"); ok && !strings.HasPrefix(name, "{") {
			for _, x := range words(env[name]) {
				argv = append(argv, sub(x))
			}
			continue
		}
		argv = append(argv, sub(w))
	}
	if bin, ok := bins[filepath.Base(argv[0])]; ok && strings.HasPrefix(argv[0], "/usr/local/bin/") {
		argv[0] = bin
	} else {
		t.Fatalf("ExecStart runs %s, not a metaproxy binary in /usr/local/bin", argv[0])
	}
	return argv
}

// copyFile copies src to dst, replacing strings as told.
func copyFile(t *testing.T, src, dst string, repl map[string]string) {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	for from, to := range repl {
		s = strings.ReplaceAll(s, from, to)
	}
	if err := os.WriteFile(dst, []byte(s), 0o640); err != nil {
		t.Fatal(err)
	}
}

// runUntilReady starts argv, waits until http://admin/readyz answers 200, then sends SIGTERM and
// checks that the process exits 0.
func runUntilReady(t *testing.T, argv []string, env map[string]string, admin string, socket *os.File, whileReady func()) {
	t.Helper()
	p := startActivated(t, argv, env, socket)
	waitReady(t, p, admin)
	if whileReady != nil {
		whileReady()
	}
	p.stop(t)
}

// process is a started ExecStart line.
type process struct {
	argv   []string
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	exited chan error
}

// startActivated starts argv with env added to this environment. With a socket, it is passed as
// systemd's socket activation does: descriptor 3, LISTEN_FDS=1 and LISTEN_PID the process's own
// pid (set by a shell that then execs argv, keeping its pid).
func startActivated(t *testing.T, argv []string, env map[string]string, socket *os.File) *process {
	t.Helper()
	args := argv
	if socket != nil {
		args = append([]string{"/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}, argv...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if socket != nil {
		cmd.Env = append(cmd.Env, "LISTEN_FDS=1")
		cmd.ExtraFiles = []*os.File{socket}
	}
	p := &process{argv: argv, cmd: cmd, logs: &bytes.Buffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return p
}

// waitReady polls the admin listener's /readyz until it answers 200 (60 s at most).
func waitReady(t *testing.T, p *process, admin string) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case err := <-p.exited:
			t.Fatalf("%v exited before it was ready: %v\n%s", p.argv, err, p.logs.String())
		case <-deadline:
			t.Fatalf("%v not ready in time\n%s", p.argv, p.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
}

// stop sends SIGTERM and wants exit status 0 within 30 s.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("%v after SIGTERM: %v, want exit 0\n%s", p.argv, err, p.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%v did not stop after SIGTERM\n%s", p.argv, p.logs.String())
	}
}

// TestExecStart runs the ExecStart lines of the extproc and xds units as subprocesses (systemd is
// not PID 1 on CI machines), waits for /readyz, stops them with SIGTERM and wants exit status 0.
// Envoy's line cannot run here (no Envoy binary); TestSystemdUnits checks its flags and bootstrap.
func TestExecStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bins := buildBinaries(t)
	t.Run("extproc", func(t *testing.T) { execStartExtproc(t, bins) })
	t.Run("xds", func(t *testing.T) { execStartXDS(t, bins) })
}

// execStartExtproc runs metaproxy-extproc.service's ExecStart line with the sample
// /etc/metaproxy/extproc.yaml, the secret as a credential, the documented lab override
// EXTPROC_OPTS=--ports-file (no Neutron here) and the socket of metaproxy-extproc.socket passed as
// systemd passes it. Only the admin port is moved to a free one.
func execStartExtproc(t *testing.T, bins map[string]string) {
	x := newExtprocUnit(t, bins)
	runUntilReady(t, x.argv, x.env, x.admin, x.socket, func() {
		// The gRPC port answers on the passed socket: a signed answer for a demo VM.
		if err := x.decide(context.Background()); err != nil {
			t.Errorf("ext_proc stream over %s: %v", x.sockPath, err)
		}
	})
}

// extprocUnit is metaproxy-extproc.service's ExecStart line, ready to run here, with the socket
// metaproxy-extproc.socket describes, opened by the test as systemd would.
type extprocUnit struct {
	argv     []string
	env      map[string]string
	admin    string
	sockPath string
	socket   *os.File // the listening socket, passed as descriptor 3
	client   extprocv3.ExternalProcessorClient
}

func newExtprocUnit(t *testing.T, bins map[string]string) *extprocUnit {
	t.Helper()
	u := parseUnit(t, "systemd/metaproxy-extproc.service")
	l := newLayout(t)
	x := &extprocUnit{admin: freePort(t)}
	copyFile(t, "systemd/etc-metaproxy/extproc.yaml", filepath.Join(l.etc, "extproc.yaml"), map[string]string{"127.0.0.1:9102": x.admin})
	copyFile(t, "../pkg/resolve/demo/ports.json", filepath.Join(l.etc, "ports.json"), nil)
	copyFile(t, "systemd/etc-metaproxy/clouds.yaml.example", filepath.Join(l.creds, "clouds.yaml"), nil)
	if err := os.WriteFile(filepath.Join(l.creds, "shared-secret"), []byte("unit-test-secret\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	env := u.env()
	lab := words(parseEnvFile(t, "systemd/etc-metaproxy/extproc.env.example")["EXTPROC_OPTS"])
	if len(lab) != 2 || lab[0] != "--ports-file" {
		t.Fatalf("extproc.env.example does not set EXTPROC_OPTS=--ports-file FILE: %v", lab)
	}
	env["EXTPROC_OPTS"] = strings.Join(lab, " ")
	x.argv = l.expand(t, u.one(t, "Service", "ExecStart"), env, bins, nil)
	x.env = map[string]string{}
	for k, v := range env {
		x.env[k] = strings.ReplaceAll(v, "%d", l.creds)
	}

	// The socket, as metaproxy-extproc.socket has systemd make it.
	sock := parseUnit(t, "systemd/metaproxy-extproc.socket")
	x.sockPath = l.path(sock.one(t, "Socket", "ListenStream"))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: x.sockPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	mode, _ := strconv.ParseUint(sock.one(t, "Socket", "SocketMode"), 8, 32)
	if err := os.Chmod(x.sockPath, os.FileMode(mode)); err != nil {
		t.Fatal(err)
	}
	x.socket, err = ln.File()
	ln.SetUnlinkOnClose(false)
	ln.Close() // the File is a duplicate that keeps the socket listening, as systemd's does
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.socket.Close() })
	conn, err := grpc.NewClient("unix://"+x.sockPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	x.client = extprocv3.NewExternalProcessorClient(conn)
	return x
}

// decide runs one ext_proc stream as Envoy does for the demo VM 10.0.0.5 on network A and wants
// the signed answer for its instance.
func (x *extprocUnit) decide(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := x.client.Process(metadata.AppendToOutgoingContext(ctx, contract.NetworkIDMetadata, demo.NetworkA))
	if err != nil {
		return err
	}
	err = st.Send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue("10.0.0.5:40000")}}},
	})
	if err != nil {
		return err
	}
	resp, err := st.Recv()
	if err != nil {
		return err
	}
	st.CloseSend()
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == "x-instance-id" && string(h.GetHeader().GetRawValue()) == "11111111-0000-4000-8000-00000000a005" {
			return nil
		}
	}
	return fmt.Errorf("not the signed answer for the demo VM: %v", resp)
}

// TestExtprocSocketActivation restarts extproc on the socket systemd would hold, as
// Restart=always with RestartSec=1s does, while ext_proc streams keep coming: none may fail, the
// ones that arrive between the two processes wait in the socket's backlog.
func TestExtprocSocketActivation(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	x := newExtprocUnit(t, buildBinaries(t))
	first := startActivated(t, x.argv, x.env, x.socket)
	waitReady(t, first, x.admin)

	var ok, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := x.decide(context.Background()); err != nil {
					failed.Add(1)
					lastErr.Store(err.Error())
					time.Sleep(10 * time.Millisecond)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	before := ok.Load()
	first.stop(t)
	time.Sleep(time.Second) // RestartSec=1s
	second := startActivated(t, x.argv, x.env, x.socket)
	waitReady(t, second, x.admin)
	after := ok.Load()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	second.stop(t)
	if failed.Load() > 0 {
		t.Errorf("%d ext_proc streams failed across the restart (last: %v); %d succeeded", failed.Load(), lastErr.Load(), ok.Load())
	}
	if before == 0 || ok.Load() == after {
		t.Errorf("streams answered: %d before the restart, %d in all, %d once the second process was ready; want some in each phase", before, ok.Load(), after)
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func parseEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			out[k] = v
		}
	}
	return out
}

// execStartXDS runs metaproxy-xds.service's ExecStart line with its default source (this host's
// namespaces, in an empty stand-in for /var/run/netns), the sample metadata_agent.ini and the
// certificates lab-ca.sh makes for this host: the node's certificate gets its configuration over
// mutual TLS, and is refused another node's. The xDS and admin ports are moved to free ones.
func execStartXDS(t *testing.T, bins map[string]string) {
	u := parseUnit(t, "systemd/metaproxy-xds.service")
	l := newLayout(t)
	copyFile(t, "systemd/etc-metaproxy/metadata_agent.ini", filepath.Join(l.etc, "metadata_agent.ini"), nil)
	copyFile(t, "systemd/etc-metaproxy/clouds.yaml.example", filepath.Join(l.creds, "clouds.yaml"), nil)
	host, _ := os.Hostname()
	tlsDir := installLabTLS(t, l.etc, host) // the unit's --node-id %H
	admin, grpcAddr := freePort(t), freePort(t)
	env := u.env()
	argv := l.expand(t, u.one(t, "Service", "ExecStart"), env, bins,
		map[string]string{"127.0.0.1:9103": admin, "127.0.0.1:18000": grpcAddr})
	procEnv := map[string]string{}
	for k, v := range env {
		procEnv[k] = strings.ReplaceAll(v, "%d", l.creds)
	}
	runUntilReady(t, argv, procEnv, admin, nil, func() { checkNodeBinding(t, grpcAddr, tlsDir, host) })
}

// ---------------------------------------------------------------------------------------------
// Compose

func TestCompose(t *testing.T) {
	doc := yamlDocs(t, "compose/compose.yaml")[0]
	services, _ := doc["services"].(map[string]any)
	for _, name := range []string{"extproc", "xds", "envoy", "nova", "vm"} {
		if services[name] == nil {
			t.Fatalf("service %s missing", name)
		}
	}
	for name, s := range services {
		if img := str(s, "image"); img != "" && get(s, "build") == nil {
			checkPinned(t, "compose "+name, img)
		}
		if df := str(s, "build", "dockerfile"); df != "" {
			if _, err := os.Stat(filepath.Join("compose", str(s, "build", "context"), df)); err != nil {
				t.Errorf("compose %s: %v", name, err)
			}
		}
		for _, v := range strs(s, "volumes") {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
					t.Errorf("compose %s: volume source: %v", name, err)
				}
			}
		}
	}
	envoy, extproc, xds := services["envoy"], services["extproc"], services["xds"]
	checkEnvoyImage(t, "compose envoy", str(envoy, "image"))
	checkEnvoyImage(t, "compose nova stand-in", str(services["nova"], "image"))
	caps := strs(envoy, "cap_add")
	for _, c := range []string{"NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE"} {
		if !slices.Contains(caps, c) {
			t.Errorf("compose envoy lacks %s", c)
		}
	}
	// extproc's socket is on a volume Envoy mounts at the same place, where cmd/xds sends Envoy.
	listen, _ := flagValue(strs(extproc, "command"), "listen")
	addr, _ := flagValue(strs(xds, "command"), "extproc-address")
	if listen != addr || !strings.HasPrefix(listen, "unix:///run/metaproxy/") {
		t.Errorf("extproc --listen %q, xds --extproc-address %q", listen, addr)
	}
	if !slices.Contains(strs(envoy, "volumes"), "run-metaproxy:/run/metaproxy") || !slices.Contains(strs(extproc, "volumes"), "run-metaproxy:/run/metaproxy") {
		t.Errorf("envoy and extproc do not share /run/metaproxy")
	}
	// The secret comes from a file, never a flag value.
	if sf, _ := flagValue(strs(extproc, "command"), "secret-file"); sf != "/run/secrets/shared-secret" || str(doc, "secrets", "shared-secret", "environment") == "" {
		t.Errorf("extproc --secret-file %q, want the compose secret /run/secrets/shared-secret", sf)
	}

	// Envoy's bootstrap is `xds bootstrap` for node "compose" and the xds service, and the node
	// and network the demo serves exist in the networks file and the demo ports.
	checkGeneratedBootstrap(t, "compose/envoy.yaml", xdscmd.BootstrapOptions{NodeID: "compose", XDSAddress: "unix:///run/metaproxy/xds.sock", AdminPort: 9901, APIType: "DELTA_GRPC", Plaintext: true})
	if node, _ := flagValue(strs(envoy, "command"), "service-node"); node != "compose" {
		t.Errorf("envoy --service-node %q, want compose", node)
	}
	raw, err := os.ReadFile("compose/networks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := source.ParseNetworks(raw, "")
	if err != nil {
		t.Fatal(err)
	}
	nets := nodes["compose"]
	if len(nets) != 1 {
		t.Fatalf("networks.yaml: node compose has %v", nets)
	}
	pf, err := resolve.NewPortsFile("../pkg/resolve/demo/ports.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	vmIP := str(services["vm"], "networks", "tenant", "ipv4_address")
	inst, err := pf.Resolve(context.Background(), resolve.Query{Scope: resolve.Scope{Kind: resolve.KindNetwork, ID: nets[0].ID}, Addr: mustAddr(t, vmIP)})
	if err != nil {
		t.Errorf("the demo VM %s on network %s does not resolve in the demo ports: %v", vmIP, nets[0].ID, err)
	} else if inst.InstanceID == "" {
		t.Errorf("the demo VM resolves to an empty instance")
	}
	checkBootstrap(t, "compose/nova-standin.yaml")
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

type k8sObjects map[string]map[string]any // "Kind/name" -> object

func loadKubernetes(t *testing.T) (k8sObjects, map[string]any) {
	t.Helper()
	kust := yamlDocs(t, "kubernetes/kustomization.yaml")[0]
	objs := k8sObjects{}
	for _, r := range strs(kust, "resources") {
		for _, d := range yamlDocs(t, filepath.Join("kubernetes", r)) {
			key := str(d, "kind") + "/" + str(d, "metadata", "name")
			if _, dup := objs[key]; dup {
				t.Errorf("%s defined twice", key)
			}
			if ns := str(d, "metadata", "namespace"); str(d, "kind") != "Namespace" && ns != "metaproxy" {
				t.Errorf("%s in namespace %q", key, ns)
			}
			objs[key] = d
		}
	}
	return objs, kust
}

func container(t *testing.T, podSpec any, name string) any {
	t.Helper()
	for _, c := range list(podSpec, "containers") {
		if str(c, "name") == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// mountedFile maps a path a container reads to the volume (and, for Secrets and ConfigMaps, the
// key) it comes from.
func mountedFile(podSpec, c any, path string) (volume any, key string, ok bool) {
	for _, m := range list(c, "volumeMounts") {
		mp := str(m, "mountPath")
		rel, found := strings.CutPrefix(path, mp+"/")
		if !found {
			continue
		}
		for _, v := range list(podSpec, "volumes") {
			if str(v, "name") != str(m, "name") {
				continue
			}
			for _, it := range append(list(v, "secret", "items"), list(v, "configMap", "items")...) {
				if str(it, "path") == rel {
					return v, str(it, "key"), true
				}
			}
			return v, rel, true
		}
	}
	return nil, "", false
}

func checkProbes(t *testing.T, where string, c any, adminPort int) {
	t.Helper()
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := str(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s %s path %q, want %s", where, probe, got, path)
		}
		if got, _ := get(c, probe, "httpGet", "port").(int); got != adminPort {
			t.Errorf("%s %s port %v, want the admin port %d", where, probe, get(c, probe, "httpGet", "port"), adminPort)
		}
	}
}

func TestKubernetes(t *testing.T) {
	objs, kust := loadKubernetes(t)
	secret := objs["Secret/metaproxy"]
	ds := objs["DaemonSet/metaproxy-node"]
	dep := objs["Deployment/metaproxy-xds"]
	if secret == nil || ds == nil || dep == nil {
		t.Fatalf("missing Secret/metaproxy, DaemonSet/metaproxy-node or Deployment/metaproxy-xds")
	}
	secretKeys, _ := secret["stringData"].(map[string]any)

	// readsSecret checks that path, read by container c, is a key of Secret/metaproxy.
	readsSecret := func(where string, pod, c any, path, wantKey string) {
		t.Helper()
		v, key, ok := mountedFile(pod, c, path)
		if !ok || str(v, "secret", "secretName") != "metaproxy" {
			t.Errorf("%s reads %s, which is not mounted from Secret/metaproxy", where, path)
			return
		}
		if key != wantKey {
			t.Errorf("%s reads %s = key %q, want %q", where, path, key, wantKey)
		}
		if _, ok := secretKeys[key]; !ok {
			t.Errorf("%s reads key %q, which Secret/metaproxy does not have (keys %v)", where, key, secretKeys)
		}
	}
	envOf := func(c any, name string) string {
		for _, e := range list(c, "env") {
			if str(e, "name") == name {
				return str(e, "value")
			}
		}
		return ""
	}

	t.Run("node DaemonSet", func(t *testing.T) {
		pod := get(ds, "spec", "template", "spec")
		if get(pod, "hostNetwork") != true {
			t.Errorf("hostNetwork is not true")
		}
		envoy, extproc := container(t, pod, "envoy"), container(t, pod, "extproc")
		checkEnvoyImage(t, "DaemonSet envoy", str(envoy, "image"))
		checkPinned(t, "DaemonSet extproc", str(extproc, "image"))
		netns := false
		for _, m := range list(envoy, "volumeMounts") {
			if str(m, "mountPath") == "/var/run/netns" {
				netns = str(m, "mountPropagation") == "HostToContainer"
				for _, v := range list(pod, "volumes") {
					if str(v, "name") == str(m, "name") && str(v, "hostPath", "path") != "/var/run/netns" {
						t.Errorf("/var/run/netns is not the host's")
					}
				}
			}
		}
		if !netns {
			t.Errorf("envoy does not mount /var/run/netns with mountPropagation HostToContainer")
		}
		caps := strs(envoy, "securityContext", "capabilities", "add")
		for _, c := range []string{"NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE"} {
			if !slices.Contains(caps, c) {
				t.Errorf("envoy lacks capability %s", c)
			}
		}
		if strs(extproc, "securityContext", "capabilities", "drop")[0] != "ALL" || get(extproc, "securityContext", "runAsNonRoot") != true {
			t.Errorf("extproc is not non-root without capabilities")
		}
		// The socket: extproc listens in an emptyDir that Envoy mounts at the same path.
		args := strs(extproc, "args")
		listen, _ := flagValue(args, "listen")
		sockDir := filepath.Dir(strings.TrimPrefix(listen, "unix://"))
		ve, _, okE := mountedFile(pod, envoy, sockDir+"/x")
		vx, _, okX := mountedFile(pod, extproc, sockDir+"/x")
		if !okE || !okX || str(ve, "name") != str(vx, "name") || get(ve, "emptyDir") == nil {
			t.Errorf("extproc's socket dir %s is not one emptyDir shared with Envoy", sockDir)
		}
		xdsAddr, _ := flagValue(strs(container(t, get(dep, "spec", "template", "spec"), "xds"), "args"), "extproc-address")
		if xdsAddr != listen {
			t.Errorf("xds sends Envoy to %q, extproc listens on %q", xdsAddr, listen)
		}
		adminArg, _ := flagValue(args, "admin-listen")
		checkProbes(t, "extproc", extproc, portOf(t, adminArg))
		if str(envoy, "readinessProbe", "httpGet", "path") != "/ready" || get(envoy, "readinessProbe", "httpGet", "port") != 9901 {
			t.Errorf("envoy readiness probe is not its admin /ready on 9901")
		}
		sf, _ := flagValue(args, "secret-file")
		readsSecret("extproc --secret-file", pod, extproc, sf, "shared-secret")
		readsSecret("extproc OS_CLIENT_CONFIG_FILE", pod, extproc, envOf(extproc, "OS_CLIENT_CONFIG_FILE"), "clouds.yaml")
		// Envoy's bootstrap comes from the generated ConfigMap and is `xds bootstrap` for the Service.
		cfgPath, _ := flagValue(strs(envoy, "args"), "config-path")
		v, key, ok := mountedFile(pod, envoy, cfgPath)
		if !ok || str(v, "configMap", "name") != "metaproxy-envoy" {
			t.Fatalf("envoy --config-path %s is not from ConfigMap metaproxy-envoy", cfgPath)
		}
		var file string
		for _, g := range list(kust, "configMapGenerator") {
			if str(g, "name") == "metaproxy-envoy" {
				for _, f := range strs(g, "files") {
					if k, p, _ := strings.Cut(f, "="); k == key {
						file = p
					}
				}
			}
		}
		if file == "" {
			t.Fatalf("configMapGenerator metaproxy-envoy has no key %s", key)
		}
		svc := objs["Service/metaproxy-xds"]
		xdsPort, _ := get(svc, "spec", "ports", 0, "port").(int)
		checkGeneratedBootstrap(t, filepath.Join("kubernetes", file), xdscmd.BootstrapOptions{NodeID: "set-by-service-node",
			XDSAddress: fmt.Sprintf("metaproxy-xds.metaproxy.svc.cluster.local:%d", xdsPort), AdminPort: 9901, APIType: "DELTA_GRPC", SDSDir: "/etc/metaproxy/sds"})
		if node, _ := flagValue(strs(envoy, "args"), "service-node"); node != "$(NODE_NAME)" {
			t.Errorf("envoy --service-node %q, want the node name", node)
		}
	})

	t.Run("xds Deployment", func(t *testing.T) {
		if get(dep, "spec", "replicas") != 2 {
			t.Errorf("replicas %v, want 2", get(dep, "spec", "replicas"))
		}
		pod := get(dep, "spec", "template", "spec")
		c := container(t, pod, "xds")
		checkPinned(t, "Deployment xds", str(c, "image"))
		args := strs(c, "args")
		admin, _ := flagValue(args, "admin-listen")
		checkProbes(t, "xds", c, portOf(t, admin))
		readsSecret("xds OS_CLIENT_CONFIG_FILE", pod, c, envOf(c, "OS_CLIENT_CONFIG_FILE"), "clouds.yaml")
		ini, _ := flagValue(args, "metadata-agent-ini")
		v, key, ok := mountedFile(pod, c, ini)
		cm := objs["ConfigMap/"+str(v, "configMap", "name")]
		if !ok || cm == nil || str(cm, "data", key) == "" {
			t.Errorf("--metadata-agent-ini %s is not a key of a ConfigMap", ini)
		} else if strings.Contains(str(cm, "data", key), "metadata_proxy_shared_secret") {
			t.Errorf("the ConfigMap's metadata_agent.ini carries the shared secret")
		}
		listen, _ := flagValue(args, "listen")
		svc := objs["Service/metaproxy-xds"]
		if get(svc, "spec", "ports", 0, "port") != portOf(t, listen) {
			t.Errorf("Service port %v, xds listens on %s", get(svc, "spec", "ports", 0, "port"), listen)
		}
	})

	t.Run("selectors", func(t *testing.T) {
		podLabels := func(workload map[string]any) map[string]any {
			l, _ := get(workload, "spec", "template", "metadata", "labels").(map[string]any)
			return l
		}
		matches := func(sel, labels map[string]any) bool {
			for k, v := range sel {
				if labels[k] != v {
					return false
				}
			}
			return len(sel) > 0
		}
		for key, o := range objs {
			var sel map[string]any
			var target map[string]any
			switch str(o, "kind") {
			case "PodDisruptionBudget", "DaemonSet", "Deployment":
				sel, _ = get(o, "spec", "selector", "matchLabels").(map[string]any)
				target = podLabels(ds)
				if strings.Contains(key, "xds") {
					target = podLabels(dep)
				}
				if strings.Contains(key, "chassis") {
					target = podLabels(objs["DaemonSet/metaproxy-chassis"])
				}
			case "Service":
				sel, _ = get(o, "spec", "selector").(map[string]any)
				target = podLabels(ds)
				if strings.Contains(key, "xds") {
					target = podLabels(dep)
				}
				if strings.Contains(key, "chassis") {
					target = podLabels(objs["DaemonSet/metaproxy-chassis"])
				}
			case "ServiceMonitor":
				sel, _ = get(o, "spec", "selector", "matchLabels").(map[string]any)
				svc := objs["Service/"+str(o, "metadata", "name")]
				target, _ = get(svc, "metadata", "labels").(map[string]any)
				port := str(o, "spec", "endpoints", 0, "port")
				found := false
				for _, p := range list(svc, "spec", "ports") {
					found = found || str(p, "name") == port
				}
				if !found || str(o, "spec", "endpoints", 0, "path") != "/metrics" {
					t.Errorf("%s scrapes port %q path %q, not a /metrics port of its Service", key, port, str(o, "spec", "endpoints", 0, "path"))
				}
			default:
				continue
			}
			if !matches(sel, target) {
				t.Errorf("%s selector %v matches nothing (%v)", key, sel, target)
			}
		}
		for _, k := range []string{"PodDisruptionBudget/metaproxy-xds", "PodDisruptionBudget/metaproxy-node", "ServiceMonitor/metaproxy-node", "ServiceMonitor/metaproxy-xds"} {
			if objs[k] == nil {
				t.Errorf("%s missing", k)
			}
		}
	})

	t.Run("kubectl kustomize", func(t *testing.T) {
		kubectl, err := exec.LookPath("kubectl")
		if err != nil {
			t.Skip("kubectl not installed: kustomization not rendered")
		}
		out, err := exec.Command(kubectl, "kustomize", "kubernetes").CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl kustomize: %v\n%s", err, out)
		}
		if !regexp.MustCompile(`name: metaproxy-envoy-[a-z0-9]{10}\n`).Match(out) {
			t.Errorf("rendered manifests do not reference the hashed Envoy ConfigMap")
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

func TestDockerfiles(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	ldflag := regexp.MustCompile(`-X (\S+)=\$\(VERSION\)`).FindSubmatch(mk)
	if ldflag == nil {
		t.Fatal("no version -X ldflag in the Makefile")
	}
	for _, svc := range []string{"extproc", "xds"} {
		raw, err := os.ReadFile("docker/Dockerfile." + svc)
		if err != nil {
			t.Fatal(err)
		}
		s := string(raw)
		var froms []string
		for _, m := range regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(s, -1) {
			froms = append(froms, m[1])
			checkPinned(t, "Dockerfile."+svc, m[1])
		}
		if len(froms) < 2 || !strings.Contains(froms[0], "golang:") {
			t.Errorf("Dockerfile.%s: not multi-stage from golang: %v", svc, froms)
		}
		if final := froms[len(froms)-1]; !strings.Contains(final, "distroless/static") && final != "scratch" {
			t.Errorf("Dockerfile.%s: final stage %s is not distroless static or scratch", svc, final)
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X " + string(ldflag[1]) + "=${VERSION}", "./cmd/" + svc} {
			if !strings.Contains(s, want) {
				t.Errorf("Dockerfile.%s does not contain %q", svc, want)
			}
		}
		user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(s)
		if user == nil || strings.HasPrefix(user[1], "0") || user[1] == "root" {
			t.Errorf("Dockerfile.%s: final image runs as root", svc)
		}
	}
}
