// Package secretfile reads files that hold secrets (the shared secret, private keys) and refuses
// those that users other than their owner may read, so that a secret is never used from a file
// every local process could have copied.
//
// The rule, the one PostgreSQL applies to its key file (check_ssl_key_file_permissions in
// postgres/postgres src/backend/libpq/be-secure-common.c): the owner is this process's user or
// root; no permission bits for others at all; no group bits either, unless the file is owned by
// root, and then only read. A root-owned file readable by its group (0440, 0640) is a group root
// chose to trust: Kubernetes gives Secret volumes exactly that (owner root, group fsGroup) and
// Debian's root:ssl-cert 0640 keys look the same. Symbolic links are followed (Kubernetes mounts
// every key as a link into ..data/), so the file judged is the one that is read.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrTooOpen marks a file whose mode or owner lets other users read it (or, for its group,
// change it).
var ErrTooOpen = errors.New("readable by other users")

// Check returns an error naming the mode to set when the file at path may be read by users other
// than its owner (see the package comment for the exact rule).
func Check(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkInfo(path, fi)
}

func checkInfo(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	perm := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", path)
	}
	euid := uint32(os.Geteuid())
	switch {
	case perm&0o007 != 0:
		return fmt.Errorf("%s has mode %04o, %w (others): chmod o-rwx %s (0600, or 0640 owned by root)", path, perm, ErrTooOpen, path)
	case perm&0o070 != 0 && st.Uid != 0:
		return fmt.Errorf("%s has mode %04o, %w (its group) and is not owned by root: chmod 0600 %s, or chown root and keep the group", path, perm, ErrTooOpen, path)
	case st.Uid != 0 && st.Uid != euid:
		return fmt.Errorf("%s is owned by uid %d, %w (its owner is neither this process's user, uid %d, nor root): chown root or the service's user", path, st.Uid, ErrTooOpen, euid)
	case st.Uid == 0 && perm&0o030 != 0:
		return fmt.Errorf("%s has mode %04o, %w (its group may change it): chmod 0640 %s", path, perm, ErrTooOpen, path)
	}
	return nil
}

// Read returns the content of the file at path after Check: the file is opened once and the open
// file is the one judged, so it cannot be swapped between the check and the read.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkInfo(path, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}
