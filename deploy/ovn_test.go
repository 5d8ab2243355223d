package deploy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/ovnchassis"
	"github.com/metaproxy/metaproxy/pkg/ovsctl"
	"github.com/metaproxy/metaproxy/pkg/ovsctl/ovsctltest"
	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

// mountNamespaceKeys are the systemd settings that give a service a mount namespace of its own.
// The chassis component must have none: the namespaces it mounts under /var/run/netns must be the
// host's.
var mountNamespaceKeys = []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
	"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
	"ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
	"MountFlags", "RootDirectory", "RootImage"}

func TestChassisUnit(t *testing.T) {
	u := parseUnit(t, "systemd/metaproxy-chassis.service")
	xds := parseUnit(t, "systemd/metaproxy-xds.service")
	for key, want := range map[string]string{"Restart": "always", "NoNewPrivileges": "yes", "User": "root", "RestrictNamespaces": "net"} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	if u.one(t, "Install", "WantedBy") != "multi-user.target" {
		t.Error("WantedBy is not multi-user.target")
	}
	bound := words(u.one(t, "Service", "CapabilityBoundingSet"))
	slices.Sort(bound)
	if want := []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"}; !slices.Equal(bound, want) {
		t.Errorf("CapabilityBoundingSet %v, want exactly %v", bound, want)
	}
	for _, k := range mountNamespaceKeys {
		if _, ok := u["Service"][k]; ok {
			t.Errorf("%s= gives the service a mount namespace: the namespaces it makes would not be the host's", k)
		}
	}
	after := words(u.one(t, "Unit", "After"))
	for _, d := range []string{"openvswitch-switch.service", "ovn-host.service"} {
		if !slices.Contains(after, d) {
			t.Errorf("After= lacks %s", d)
		}
	}
	if u.env()["OS_CLOUD"] != "metaproxy" || u.env()["OS_CLIENT_CONFIG_FILE"] != "%d/clouds.yaml" ||
		!slices.Contains(u["Service"]["LoadCredential"], "clouds.yaml:/etc/metaproxy/clouds.yaml") {
		t.Errorf("Neutron credentials are not the clouds.yaml credential: %v %v", u.env(), u["Service"]["LoadCredential"])
	}
	args := words(u.one(t, "Service", "ExecStart"))
	if len(args) < 2 || args[0] != "/usr/local/bin/xds" || args[1] != "chassis" {
		t.Fatalf("ExecStart %v is not `xds chassis`", args)
	}
	// The chassis makes its namespaces where cmd/xds looks for them.
	nsDir, _ := flagValue(args, "netns-dir")
	if xdsDir, _ := flagValue(words(xds.one(t, "Service", "ExecStart")+" "+xds.env()["XDS_SOURCE_OPTS"]), "netns-dir"); nsDir != "/var/run/netns" || xdsDir != nsDir {
		t.Errorf("xds chassis --netns-dir %q, cmd/xds --netns-dir %q: want both /var/run/netns", nsDir, xdsDir)
	}
	admin, _ := flagValue(args, "admin-listen")
	if admin != "127.0.0.1:9104" {
		t.Errorf("--admin-listen %q, want 127.0.0.1:9104 (9102 and 9103 are extproc's and xds's)", admin)
	}
}

// TestChassisExecStart runs metaproxy-chassis.service's ExecStart line as a subprocess against a
// real Open_vSwitch and Southbound database (no ovs-vswitchd, no ovn-controller) and a Neutron that
// has no VM on the chassis, with CHASSIS_OPTS pointing it at them as /etc/metaproxy/chassis.env
// would: it must get ready, register as the chassis's OVN Metadata agent, and stop on SIGTERM.
func TestChassisExecStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	ovs, sb := ovsctltest.OpenVSwitch(t), ovsctltest.Southbound(t)
	ovsctltest.Run(t, "ovs-vsctl", "--db="+ovs, "--no-wait", "set", "Open_vSwitch", ".",
		"external_ids:system-id=chassis-1", "external_ids:hostname=compute-1", "external_ids:ovn-remote="+sb)
	ovsctltest.Run(t, "ovn-sbctl", "--db="+sb, "create", "Chassis_Private", "name=chassis-1")
	neutron := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		key := strings.TrimPrefix(r.URL.Path, "/v2.0/")
		json.NewEncoder(w).Encode(map[string]any{key: []any{}})
	}))
	defer neutron.Close()

	bins := buildBinaries(t)
	u := parseUnit(t, "systemd/metaproxy-chassis.service")
	l := newLayout(t)
	admin := freePort(t)
	env := u.env()
	env["CHASSIS_OPTS"] = "--ovsdb-connection " + ovs + " --neutron-url " + neutron.URL + "/"
	argv := l.expand(t, u.one(t, "Service", "ExecStart"), env, bins, map[string]string{"127.0.0.1:9104": admin})
	procEnv := map[string]string{}
	for k, v := range env {
		procEnv[k] = strings.ReplaceAll(v, "%d", l.creds)
	}
	runUntilReady(t, argv, procEnv, admin, nil, func() {
		// Readiness is the first reconcile pass; the agent report runs beside it, so it may
		// land just after.
		var (
			ids map[string]string
			err error
		)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			ids, err = ovsctl.NewSB(ovsctl.SBOptions{DB: sb}).ExternalIDs(t.Context(), "Chassis_Private", "chassis-1")
			if err == nil && ids[ovnchassis.KeyAgentID] == ovnchassis.AgentID("chassis-1") {
				return
			}
		}
		t.Errorf("Chassis_Private external_ids %v (%v) 10 s after ready: not registered as the OVN Metadata agent", ids, err)
	})
}

func TestKubernetesChassis(t *testing.T) {
	objs, kust := loadKubernetes(t)
	ds := objs["DaemonSet/metaproxy-chassis"]
	if ds == nil {
		t.Fatal("no DaemonSet/metaproxy-chassis")
	}
	pod := get(ds, "spec", "template", "spec")
	if get(pod, "hostNetwork") != true {
		t.Error("hostNetwork is not true")
	}
	if str(pod, "nodeSelector", "metaproxy.openstack.org/ovn-chassis") != "true" {
		t.Errorf("nodeSelector %v", get(pod, "nodeSelector"))
	}
	envoy, extproc, xds, chassis := container(t, pod, "envoy"), container(t, pod, "extproc"), container(t, pod, "xds"), container(t, pod, "chassis")
	checkEnvoyImage(t, "chassis DaemonSet envoy", str(envoy, "image"))
	for _, c := range []any{extproc, xds, chassis} {
		checkPinned(t, "chassis DaemonSet "+str(c, "name"), str(c, "image"))
	}
	images := map[string]bool{}
	for _, im := range list(kust, "images") {
		images[str(im, "name")] = true
	}
	if !images["metaproxy/chassis"] {
		t.Error("kustomization.yaml does not pin metaproxy/chassis")
	}

	mount := func(c any, path string) any {
		for _, m := range list(c, "volumeMounts") {
			if str(m, "mountPath") == path {
				return m
			}
		}
		return nil
	}
	hostPath := func(m any) string {
		for _, v := range list(pod, "volumes") {
			if str(v, "name") == str(m, "name") {
				return str(v, "hostPath", "path")
			}
		}
		return ""
	}
	// The chassis container's namespaces reach the host (Bidirectional, which needs privileged),
	// and from there Envoy and cmd/xds (HostToContainer).
	if m := mount(chassis, "/var/run/netns"); m == nil || str(m, "mountPropagation") != "Bidirectional" || hostPath(m) != "/var/run/netns" {
		t.Errorf("chassis /var/run/netns mount %v: want the host's, Bidirectional", m)
	}
	if get(chassis, "securityContext", "privileged") != true {
		t.Error("chassis is not privileged: Kubernetes refuses Bidirectional propagation otherwise")
	}
	for _, c := range []any{envoy, xds} {
		if m := mount(c, "/var/run/netns"); m == nil || str(m, "mountPropagation") != "HostToContainer" || hostPath(m) != "/var/run/netns" {
			t.Errorf("%s /var/run/netns mount %v: want the host's, HostToContainer", str(c, "name"), m)
		}
	}
	if m := mount(chassis, "/var/run/openvswitch"); m == nil || hostPath(m) != "/var/run/openvswitch" {
		t.Errorf("chassis does not see the host's Open_vSwitch socket: %v", m)
	}
	if got := get(envoy, "securityContext", "capabilities", "add"); !slices.Equal(strsOf(got), []string{"NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE"}) {
		t.Errorf("envoy capabilities %v", got)
	}
	if got := strsOf(get(xds, "securityContext", "capabilities", "add")); !slices.Equal(got, []string{"SYS_ADMIN"}) {
		t.Errorf("xds capabilities %v, want SYS_ADMIN only (setns into the namespaces)", got)
	}

	xargs, cargs, eargs := strs(xds, "args"), strs(chassis, "args"), strs(extproc, "args")
	for _, want := range []string{"--source=netns", "--netns-dir=/var/run/netns", "--node-id=$(NODE_NAME)"} {
		if !slices.Contains(xargs, want) {
			t.Errorf("xds args %v lack %s", xargs, want)
		}
	}
	if !slices.Contains(cargs, "--netns-dir=/var/run/netns") {
		t.Errorf("chassis args %v lack --netns-dir=/var/run/netns", cargs)
	}
	if !slices.Contains(strs(envoy, "args"), "--service-node=$(NODE_NAME)") {
		t.Error("envoy's node id is not the node name cmd/xds uses")
	}
	// Envoy reaches this pod's cmd/xds on its socket in the shared emptyDir, and cmd/xds sends it to
	// this pod's extproc socket.
	xdsListen := argValue(xargs, "--listen")
	if xdsListen != "unix:///run/metaproxy/xds.sock" || argValue(xargs, "--extproc-address") != argValue(eargs, "--listen") {
		t.Errorf("xds --listen %q --extproc-address %q, extproc --listen %q", xdsListen, argValue(xargs, "--extproc-address"), argValue(eargs, "--listen"))
	}
	for _, c := range []any{envoy, extproc, xds} {
		if m := mount(c, "/run/metaproxy"); m == nil || str(m, "name") != "run-metaproxy" {
			t.Errorf("%s does not share /run/metaproxy (the sockets)", str(c, "name"))
		}
	}
	checkGeneratedBootstrap(t, "kubernetes/chassis-envoy-bootstrap.yaml", xdscmd.BootstrapOptions{
		NodeID: "set-by-service-node", XDSAddress: xdsListen, AdminPort: 9901, APIType: "DELTA_GRPC", Plaintext: true})
	if v, _, ok := mountedFile(pod, envoy, "/etc/envoy/envoy.yaml"); !ok || str(v, "configMap", "name") != "metaproxy-chassis-envoy" {
		t.Errorf("envoy's bootstrap is not ConfigMap metaproxy-chassis-envoy: %v", v)
	}
	generated := false
	for _, g := range list(kust, "configMapGenerator") {
		generated = generated || (str(g, "name") == "metaproxy-chassis-envoy" && slices.Contains(strs(g, "files"), "envoy.yaml=chassis-envoy-bootstrap.yaml"))
	}
	if !generated {
		t.Error("kustomization.yaml does not generate metaproxy-chassis-envoy from chassis-envoy-bootstrap.yaml")
	}
	if v, _, ok := mountedFile(pod, xds, "/etc/metaproxy/config/metadata_agent.ini"); !ok || str(v, "configMap", "name") != "metaproxy-xds" ||
		argValue(xargs, "--metadata-agent-ini") != "/etc/metaproxy/config/metadata_agent.ini" {
		t.Errorf("xds's metadata_agent.ini is not ConfigMap metaproxy-xds's")
	}
	for _, c := range []any{extproc, chassis} {
		if v, key, ok := mountedFile(pod, c, "/etc/metaproxy/secret/clouds.yaml"); !ok || str(v, "secret", "secretName") != "metaproxy" || key != "clouds.yaml" {
			t.Errorf("%s does not read clouds.yaml from Secret/metaproxy", str(c, "name"))
		}
	}
	for i, c := range []any{extproc, xds, chassis} {
		checkProbes(t, "chassis DaemonSet "+str(c, "name"), c, 9102+i)
	}
	if objs["PodDisruptionBudget/metaproxy-chassis"] == nil || objs["Service/metaproxy-chassis"] == nil {
		t.Error("PodDisruptionBudget or Service metaproxy-chassis missing")
	}
}

func strsOf(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// argValue returns the value of --name=value in a container's args.
func argValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func TestDockerfileChassis(t *testing.T) {
	raw, err := os.ReadFile("docker/Dockerfile.chassis")
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	var froms []string
	for _, m := range regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(s, -1) {
		froms = append(froms, m[1])
		checkPinned(t, "Dockerfile.chassis", m[1])
	}
	if len(froms) != 2 || !strings.Contains(froms[0], "golang:") || !strings.Contains(froms[1], "debian:12") {
		t.Errorf("Dockerfile.chassis stages %v: want golang, then Debian 12 (the OVN hosts' tools)", froms)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X github.com/metaproxy/metaproxy/pkg/version.Version=${VERSION}", "./cmd/xds",
		"openvswitch-common", "ovn-common", "iptables", `ENTRYPOINT ["/usr/local/bin/xds", "chassis"]`} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile.chassis does not contain %q", want)
		}
	}
	if _, err := os.Stat("docker/Dockerfile.chassis.dockerignore"); err != nil {
		t.Error(err)
	}
}
