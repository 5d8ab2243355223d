//go:build e2e

package vmnet

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Listen opens a listener inside namespace ns (e.g. a stand-in metadata server on
// 169.254.169.254:80 in a qdhcp namespace). A socket stays in the namespace it was created in, so
// the listener serves there while the rest of the process stays in its own namespace.
func Listen(ctx context.Context, ns, network, address string) (net.Listener, error) {
	var l net.Listener
	err := inNamespace(ns, func() error {
		var err error
		l, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("vmnet: listen on %s %s in %s: %w", network, address, ns, err)
	}
	return l, nil
}

// inNamespace runs fn on an OS thread switched into namespace ns. The thread is switched back
// afterwards; if that fails it is left locked so that the runtime discards it.
func inNamespace(ns string, fn func() error) error {
	target, err := os.Open(NamespacePath(ns))
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("return from namespace: %w", err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
