package netns

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// inode is the identity of the network namespace of the calling thread.
func inode() (uint64, error) {
	var st unix.Stat_t
	err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st)
	return st.Ino, err
}

func TestDoRunsInsideTheNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ip netns add)")
	}
	name := fmt.Sprintf("metaproxy-netns-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	path := filepath.Join("/run/netns", name)
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		t.Fatal(err)
	}

	var inside uint64
	if err := Do(path, func() (err error) { inside, err = inode(); return err }); err != nil {
		t.Fatal(err)
	}
	if inside != want.Ino {
		t.Errorf("fn ran in namespace %d, want %d", inside, want.Ino)
	}
	if here, err := inode(); err != nil || here == want.Ino {
		t.Errorf("the caller's namespace afterwards: %v, %v", here, err)
	}
	wantErr := fmt.Errorf("from fn")
	if err := Do(path, func() error { return wantErr }); err != wantErr {
		t.Errorf("Do returned %v, want fn's error", err)
	}
}

func TestDoRefusesWhatIsNotANamespace(t *testing.T) {
	notNS := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ran := false
	for _, path := range []string{notNS, filepath.Join(t.TempDir(), "missing")} {
		if err := Do(path, func() error { ran = true; return nil }); err == nil {
			t.Errorf("Do(%s) succeeded", path)
		}
	}
	if ran {
		t.Error("fn ran outside a namespace")
	}
}
