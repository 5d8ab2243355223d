package netnslisten

import (
	"context"
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func reusePortOf(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestReusePort checks that two listeners share an address exactly when both set SO_REUSEPORT,
// which is how a metadata listener is bound beside haproxy's during a migration.
func TestReusePort(t *testing.T) {
	tests := map[string]struct {
		first, second bool
		wantShared    bool
	}{
		"both":        {first: true, second: true, wantShared: true},
		"first only":  {first: true, second: false},
		"second only": {first: false, second: true},
		"neither":     {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			a, err := Listen(ctx, Spec{Network: "tcp", Address: "127.0.0.1:0", ReusePort: tc.first})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if got, want := reusePortOf(t, a), map[bool]int{true: 1, false: 0}[tc.first]; got != want {
				t.Errorf("first listener SO_REUSEPORT = %d, want %d", got, want)
			}
			addr := "127.0.0.1:" + strconv.Itoa(a.Addr().(*net.TCPAddr).Port)
			b, err := Listen(ctx, Spec{Network: "tcp", Address: addr, ReusePort: tc.second})
			if tc.wantShared {
				if err != nil {
					t.Fatalf("second listener on %s: %v", addr, err)
				}
				defer b.Close()
				if reusePortOf(t, b) != 1 {
					t.Error("second listener has no SO_REUSEPORT")
				}
				// Closing one leaves the other serving the address.
				a.Close()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatalf("dial after closing the first listener: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				b.Close()
				t.Fatalf("second listener bound %s without SO_REUSEPORT on both", addr)
			}
			if !errors.Is(err, unix.EADDRINUSE) {
				t.Errorf("second listener: %v, want EADDRINUSE", err)
			}
		})
	}
}
