package listen

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

// listenSystemd returns the socket systemd passed, as sd_listen_fds(3) defines it: LISTEN_PID is
// this process, LISTEN_FDS counts the descriptors from 3. The variables are unset so that no child
// process takes them for its own. The socket's mode and owner are the .socket unit's (SocketMode,
// SocketUser, SocketGroup).
func listenSystemd() (net.Listener, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	const hint = "start it through its .socket unit (deploy/systemd/metaproxy-extproc.socket) or give --listen unix:///path.sock"
	switch {
	case pid == "" || fds == "":
		return nil, fmt.Errorf("listen %s: systemd passed no socket (LISTEN_PID/LISTEN_FDS unset): %s", Systemd, hint)
	case pid != strconv.Itoa(os.Getpid()):
		return nil, fmt.Errorf("listen %s: the sockets systemd passed are for process %s, not this one (%d): %s", Systemd, pid, os.Getpid(), hint)
	case fds != "1":
		return nil, fmt.Errorf("listen %s: systemd passed %s sockets, want exactly one (one ListenStream= in the .socket unit)", Systemd, fds)
	}
	const firstFD = 3 // SD_LISTEN_FDS_START
	f := os.NewFile(firstFD, "systemd socket")
	defer f.Close() // FileListener holds its own duplicate
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listen %s: descriptor %d is not a listening socket: %w", Systemd, firstFD, err)
	}
	return l, nil
}
