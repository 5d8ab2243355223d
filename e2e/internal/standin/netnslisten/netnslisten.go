// Package netnslisten opens listening sockets inside another network namespace, the way Envoy
// does for a listener whose SocketAddress carries network_namespace_filepath: the calling OS thread
// switches to the namespace, creates the socket (which stays bound to that namespace for its whole
// life), and switches back.
package netnslisten

import (
	"context"
	"errors"
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
	// ReusePort sets SO_REUSEPORT before bind, as Envoy does for listeners unless
	// enable_reuse_port is false: the socket then shares its address with other SO_REUSEPORT
	// sockets of the same user (another proxy, a previous version of this listener) and the
	// kernel spreads new connections between them.
	ReusePort bool
	// Options are socket options set before bind (Prebind) or after listen (otherwise), like
	// Envoy's SocketOption; SO_BINDTODEVICE is what makes a link-local IPv6 address without a
	// zone bindable.
	Options []SocketOption
}

// SocketOption is one setsockopt call.
type SocketOption struct {
	Level, Name int
	// Int is used when Buf is nil.
	Int int
	Buf []byte
	// Prebind applies the option before bind(2); otherwise after listen(2).
	Prebind bool
}

func (o SocketOption) apply(fd int) error {
	var err error
	if o.Buf != nil {
		err = unix.SetsockoptString(fd, o.Level, o.Name, string(o.Buf))
	} else {
		err = unix.SetsockoptInt(fd, o.Level, o.Name, o.Int)
	}
	if err != nil {
		return fmt.Errorf("setsockopt(level %d, name %d): %w", o.Level, o.Name, err)
	}
	return nil
}

// Listen opens a listener as described by s.
func Listen(ctx context.Context, s Spec) (net.Listener, error) {
	lc := net.ListenConfig{}
	lc.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if s.ReusePort {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
					serr = fmt.Errorf("setsockopt(SO_REUSEPORT): %w", serr)
					return
				}
			}
			if s.Freebind {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1); serr != nil {
					return
				}
				// IPV6_FREEBIND only exists on IPv6 sockets; ignore the error on IPv4 ones.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			}
			for _, o := range s.Options {
				if o.Prebind {
					if serr = o.apply(int(fd)); serr != nil {
						return
					}
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
	network := s.Network
	if network == "" {
		network = "tcp"
	}
	if s.NetnsPath == "" {
		ln, err := lc.Listen(ctx, network, s.Address)
		if err != nil {
			return nil, err
		}
		return afterListen(ln, s)
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
	if r.err != nil {
		return nil, r.err
	}
	return afterListen(r.ln, s)
}

// afterListen applies the options that are not Prebind.
func afterListen(ln net.Listener, s Spec) (net.Listener, error) {
	var post []SocketOption
	for _, o := range s.Options {
		if !o.Prebind {
			post = append(post, o)
		}
	}
	if len(post) == 0 {
		return ln, nil
	}
	sc, ok := ln.(syscall.Conn)
	if !ok {
		ln.Close()
		return nil, errors.New("listener has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		ln.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for _, o := range post {
			if serr = o.apply(int(fd)); serr != nil {
				return
			}
		}
	}); err != nil {
		serr = err
	}
	if serr != nil {
		ln.Close()
		return nil, serr
	}
	return ln, nil
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
