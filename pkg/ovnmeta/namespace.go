package ovnmeta

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// createNamespace creates the named network namespace dir/name as `ip netns add` does (iproute2,
// ip/ipnetns.c, netns_add): dir becomes a shared mount point (bind-mounted onto itself first if it
// is not a mount point), so that the namespace's mount propagates to other mount namespaces that
// see dir (a container's bind mount with propagation, a service's private mounts); an empty file
// is created, and a new network namespace, made on a locked thread, is bind-mounted onto it.
// vishvananda/netns.NewNamed leaves out the shared mount and hard-codes /run/netns, hence this.
// An existing namespace is an error wrapping os.ErrExist.
func createNamespace(dir, name string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	for bound := false; ; {
		err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s a shared mount: %w", dir, err)
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s onto itself: %w", dir, err)
		}
		bound = true
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("create namespace file: %w", err)
	}
	f.Close()
	if err := bindNewNetns(path); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// bindNewNetns makes a new network namespace on a dedicated thread and bind-mounts it onto path.
// The thread goes back to its namespace afterwards; if it cannot, it stays locked, so that the Go
// runtime ends it instead of reusing a thread in the wrong namespace.
func bindNewNetns(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		orig, err := os.Open(self)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		merr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("back to the original namespace: %w", err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		if merr != nil {
			merr = fmt.Errorf("bind-mount the new namespace on %s: %w", path, merr)
		}
		errc <- merr
	}()
	return <-errc
}

// deleteNamespace removes the named namespace at path as `ip netns delete` does: a lazy unmount,
// then the file. The namespace itself lives on while something (a listener's socket) uses it.
func deleteNamespace(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
