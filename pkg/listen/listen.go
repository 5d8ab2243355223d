package listen

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Systemd is the Open address of the socket systemd passes (socket activation).
const Systemd = "systemd"

// SocketMode is the mode of the UNIX sockets Open creates: owner and group may connect, others not.
const SocketMode fs.FileMode = 0o660

// maxSocketPath is the longest path a UNIX socket address holds on Linux (sun_path is 108 bytes,
// the last for the terminating NUL).
const maxSocketPath = 107

// Open opens addr: "unix:///path/to.sock" (created with mode SocketMode and the process's user and
// group as owner in one step, replacing a stale socket at that path atomically), "host:port", or
// Systemd: the one listening socket systemd passed to this process (socket activation:
// LISTEN_PID, LISTEN_FDS, descriptor 3). That socket belongs to systemd and outlives the process:
// connections that arrive while the service restarts wait in its backlog instead of being refused.
//
// Open decides nothing about who may connect: wrap a UNIX listener with CheckPeers, serve a TCP
// one with TLS (package tlsfiles). l.Addr().Network() says which one Open returned.
func Open(addr string) (net.Listener, error) {
	if addr == Systemd {
		return listenSystemd()
	}
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		return unixSocket{}.listen(path)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// IsUnix reports whether addr names a UNIX socket (unix:///path).
func IsUnix(addr string) bool { return strings.HasPrefix(addr, "unix://") }

// unixSocket creates UNIX sockets. Its hook runs between the socket's creation and its
// publication at the final path (tests look at the state of things there).
type unixSocket struct {
	beforePublish func(tmp string)
}

// listen creates the socket at path with no moment at which it exists there with another mode
// or owner: bind(2) creates the socket file with the process's umask applied, so it is bound
// inside a fresh directory only this process can enter (mode 0700), given mode SocketMode there,
// and only then renamed to path. rename(2) is atomic: whoever looks at path sees the old file
// (a stale socket), nothing, or this socket with its final mode, never a window between bind and
// chmod. This needs no process-wide umask change (which would race with other goroutines creating
// files) and works for any umask.
func (u unixSocket) listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen address unix://: empty socket path")
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("listen address unix://%s: want an absolute path (unix:///run/metaproxy/extproc.sock)", path)
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s is %d bytes, longer than the %d a UNIX socket address holds", path, len(path), maxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket == 0 {
		return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another path", path)
	}
	dir := filepath.Dir(path)
	private, err := os.MkdirTemp(dir, ".mp")
	if err != nil {
		return nil, fmt.Errorf("socket %s: private directory in %s: %w", path, dir, err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	if len(tmp) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s: its directory %s is too long to create the socket in (%d bytes, at most %d)", path, dir, len(tmp), maxSocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on unix://%s: %w", path, err)
	}
	// Go would unlink tmp on Close; the socket lives at path, which unixListener.Close removes.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, SocketMode); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: set mode %04o: %w", path, SocketMode, err)
	}
	if u.beforePublish != nil {
		u.beforePublish(tmp)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: move into place: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return &unixListener{UnixListener: l, addr: &net.UnixAddr{Name: path, Net: "unix"}, ino: inode(fi)}, nil
}

// unixListener is a socket published at addr by rename: it reports that address, and removes the
// file on Close if it is still this socket (a newer process may have published its own there).
type unixListener struct {
	*net.UnixListener
	addr *net.UnixAddr
	ino  uint64
}

func (l *unixListener) Addr() net.Addr { return l.addr }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.addr.Name); serr == nil && inode(fi) == l.ino {
		os.Remove(l.addr.Name)
	}
	return err
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
