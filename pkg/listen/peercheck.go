package listen

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// CheckPeers returns l with every accepted connection's peer checked against peers: a UNIX socket
// peer whose uid and gid (SO_PEERCRED) are not allowed, or whose credentials cannot be read, is
// closed at once, before the server reads anything from it (no HTTP/2 preface, no request), and
// recorded in refusals; Accept then waits for the next connection. Connections that are not on a
// UNIX socket are refused the same way: CheckPeers is for UNIX listeners only.
func CheckPeers(l net.Listener, peers Peers, refusals *Refusals) net.Listener {
	return &peerListener{Listener: l, peers: peers, refusals: refusals}
}

type peerListener struct {
	net.Listener
	peers    Peers
	refusals *Refusals
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := PeerCredentials(c)
		if err != nil {
			l.refusals.Refuse(c.RemoteAddr().Network()+" "+c.RemoteAddr().String(), ReasonPeerCredentials,
				"connection refused: its peer credentials cannot be read", "listener", l.Addr().String(), "error", err)
			c.Close()
			continue
		}
		if l.peers.Allows(cred.Uid, cred.Gid) {
			return c, nil
		}
		l.refusals.Refuse(fmt.Sprintf("uid=%d gid=%d", cred.Uid, cred.Gid), ReasonPeerCredentials,
			"connection refused: peer is not an allowed user or group (allowed_peers)",
			"listener", l.Addr().String(), "uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid, "allowed", l.peers.String())
		c.Close()
	}
}

// PeerCredentials returns the credentials of the process at the other end of a UNIX socket
// connection (SO_PEERCRED: its pid and effective uid and gid when it called connect(2)).
func PeerCredentials(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("not a UNIX socket connection (%T)", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred, nil
}
