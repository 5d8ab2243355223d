// Package netnslisten opens listening sockets inside another network namespace, the way Envoy
// does for a listener whose SocketAddress carries network_namespace_filepath: the calling OS thread
// switches to the namespace, creates the socket (which stays bound to that namespace for its whole
// life), and switches back.
package netnslisten

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Spec says where to listen.
type Spec struct {
	// Network is "tcp" (the only socket type the stand-in serves).
	Network string
	// Address is "host:port"; an IPv6 link-local host may carry a zone ("[fe80::1%eth0]:80"),
	// resolved inside the namespace.
	Address string
	// NetnsPath is a network namespace file such as /var/run/netns/qdhcp-<id>; "" means the
	// namespace of the process.
	NetnsPath string
	// Freebind sets IP_FREEBIND so the address need not be configured yet.
	Freebind bool
}

// Listen opens a listener as described by s.
func Listen(ctx context.Context, s Spec) (net.Listener, error) {
	lc := net.ListenConfig{}
	if s.Freebind {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
				if serr == nil {
					// IPV6_FREEBIND only exists on IPv6 sockets; ignore the error on IPv4 ones.
					_ = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	network := s.Network
	if network == "" {
		network = "tcp"
	}
	if s.NetnsPath == "" {
		return lc.Listen(ctx, network, s.Address)
	}
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	// A dedicated goroutine owns the OS thread while it is in the other namespace: if switching
	// back fails, the goroutine exits without unlocking, so the Go runtime throws the thread away
	// instead of reusing it in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		ln, restored, err := listenIn(ctx, lc, network, s)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

func listenIn(ctx context.Context, lc net.ListenConfig, network string, s Spec) (ln net.Listener, restored bool, err error) {
	orig, err := netns.Get()
	if err != nil {
		return nil, true, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(s.NetnsPath)
	if err != nil {
		return nil, true, fmt.Errorf("open netns %s: %w", s.NetnsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, true, fmt.Errorf("enter netns %s: %w", s.NetnsPath, err)
	}
	ln, lerr := lc.Listen(ctx, network, s.Address)
	if err := netns.Set(orig); err != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, false, fmt.Errorf("return from netns %s: %w", s.NetnsPath, err)
	}
	if lerr != nil {
		return nil, true, fmt.Errorf("listen on %s in netns %s: %w", s.Address, s.NetnsPath, lerr)
	}
	return ln, true, nil
}
