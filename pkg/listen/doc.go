// Package listen opens the sockets cmd/extproc (and cmd/xds) serve on and decides who may use
// them, before a single byte of a request is read:
//
//   - Open: a UNIX socket created with its final mode in one step (bound in a private directory,
//     then renamed into place), a TCP address, or the socket systemd passes (socket activation).
//   - CheckPeers: every connection to a UNIX socket is checked with SO_PEERCRED against an
//     allow-list of users and groups (Peers) and closed at accept when its peer is not on it.
//   - Refusals: what was refused is logged once per peer (then at most once a minute) and counted.
//
// TLS for TCP listeners is package tlsfiles; the gRPC servers only see connections that passed.
package listen
