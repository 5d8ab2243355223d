// Package listentest runs a part of a test as another user, to check what a UNIX socket's peer
// check does with a client that is not allowed: the test binary is copied where that user can
// execute it and started again with only the named test function, under the given uid and gid
// (syscall.Credential), with the environment the test passes. Needs root.
package listentest

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Nobody is the uid and gid of Debian's nobody/nogroup: a user no allow-list names.
const Nobody = 65534

// ChildEnv is set in the environment of a process RunAs starts; the named test function does its
// work only when it is set.
const ChildEnv = "METAPROXY_LISTENTEST_CHILD"

// SharedDir returns a new directory that every user may enter (mode 0755, unlike t.TempDir), for
// sockets that another user's process must reach. It is removed when the test ends.
func SharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "listentest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// RunAs runs the test function named test of this test binary as uid and gid, with env added to
// ChildEnv=1, and returns its combined output and error. The test is skipped unless the test runs
// as root.
func RunAs(t *testing.T, uid, gid uint32, test string, env ...string) (string, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(SharedDir(t), "test.bin")
	copyFile(t, self, bin)
	cmd := exec.Command(bin, "-test.run=^"+test+"$", "-test.count=1")
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append([]string{ChildEnv + "=1", "PATH=/usr/bin:/bin"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// IsChild reports whether this process was started by RunAs.
func IsChild() bool { return os.Getenv(ChildEnv) == "1" }

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
