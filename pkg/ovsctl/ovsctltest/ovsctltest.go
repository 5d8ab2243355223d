// Package ovsctltest starts throwaway ovsdb-servers (an Open_vSwitch or an OVN Southbound
// database on a UNIX socket in the test's temporary directory) for tests of code that runs
// ovs-vsctl and ovn-sbctl. No ovs-vswitchd or ovn-controller runs: the databases are real, nothing
// acts on them. Tests skip when the Open vSwitch or OVN packages are not installed.
package ovsctltest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Schemas as Debian's openvswitch-common and ovn-common install them.
const (
	VSwitchSchema    = "/usr/share/openvswitch/vswitch.ovsschema"
	SouthboundSchema = "/usr/share/ovn/ovn-sb.ovsschema"
	NorthboundSchema = "/usr/share/ovn/ovn-nb.ovsschema"
	startupDeadline  = 20 * time.Second
	shutdownDeadline = 10 * time.Second
)

// OpenVSwitch starts an Open_vSwitch database initialised with `ovs-vsctl init` and returns its
// remote ("unix:/…/db.sock").
func OpenVSwitch(t testing.TB) string {
	t.Helper()
	db := serve(t, VSwitchSchema, "ovs-vsctl")
	run(t, "ovs-vsctl", "--db="+db, "--no-wait", "init")
	return db
}

// Southbound starts an OVN Southbound database initialised with `ovn-sbctl init` (one SB_Global
// record) and returns its remote.
func Southbound(t testing.TB) string {
	t.Helper()
	db := serve(t, SouthboundSchema, "ovn-sbctl")
	run(t, "ovn-sbctl", "--db="+db, "init")
	return db
}

// serve creates a database from schema in a new temporary directory, runs ovsdb-server on it in
// the foreground (stopped when the test ends) and waits for its socket.
func serve(t testing.TB, schema, client string) string {
	t.Helper()
	for _, bin := range []string{"ovsdb-tool", "ovsdb-server", client} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: %s not installed (make deps installs openvswitch-switch and ovn-host)", bin)
		}
	}
	if _, err := os.Stat(schema); err != nil {
		t.Skipf("skipping: schema %s not installed", schema)
	}
	// UNIX socket paths are limited to 108 bytes: keep them short.
	dir, err := os.MkdirTemp("", "ovsdb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file, sock := filepath.Join(dir, "db"), filepath.Join(dir, "db.sock")
	run(t, "ovsdb-tool", "create", file, schema)
	cmd := exec.Command("ovsdb-server", file, "--remote=punix:"+sock, "--unixctl="+filepath.Join(dir, "ctl"),
		"--no-chdir", "-vconsole:off", "--log-file="+filepath.Join(dir, "log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ovsdb-server: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(shutdownDeadline):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(startupDeadline)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return "unix:" + sock
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("ovsdb-server exited: %s", log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ovsdb-server socket %s did not appear", sock)
		}
	}
}

// Run runs a tool (ovs-vsctl, ovn-sbctl, ...) and fails the test if it fails; it returns stdout.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return run(t, name, args...)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("%s %v: %v: %s", name, args, err, msg)
	}
	return string(out)
}
